// captinv: one namespaced global; every element it touches has a captinv_ id.
// Elements that gradio renders are only ever changed through gradio; captinv writes its live
// progress into #captinv_live, a node of its own that gradio never re-renders.
var captinv = (function() {
    function live() {
        return gradioApp().querySelector('#captinv_live');
    }

    function escapeHtml(text) {
        var div = document.createElement('div');
        div.textContent = text;
        return div.innerHTML;
    }

    // The loss so far as a small polyline, redrawn on every progress update.
    function lossSvg(losses) {
        var finite = losses.filter(function(x) {
            return isFinite(x);
        });
        if (finite.length < 2) {
            return '';
        }
        var low = Math.min.apply(null, finite), high = Math.max.apply(null, finite);
        var span = (high - low) || 1, width = 320, height = 80;
        var points = finite.map(function(value, i) {
            return (i * width / (finite.length - 1)).toFixed(1) + ',' + (height - (value - low) / span * height).toFixed(1);
        }).join(' ');
        return '<svg class="captinv-loss captinv-live-loss" viewBox="0 0 ' + width + ' ' + height + '" width="' + width + '" height="' + height + '">' +
            '<polyline fill="none" stroke="currentColor" stroke-width="1.5" points="' + points + '"/></svg>';
    }

    function showProgress(textinfo) {
        var box = live();
        if (!box) {
            return;
        }
        fetch('./captinv/v1/progress').then(function(response) {
            return response.ok ? response.json() : {losses: []};
        }).then(function(state) {
            box.innerHTML = '<div class="captinv-phase">' + escapeHtml(textinfo || state.phase || '') + '</div>' + lossSvg(state.losses || []);
        }).catch(function() {
            box.textContent = textinfo || '';
        });
    }

    // Reload the Textual Inversion and Perfusion card pages of txt2img and img2img through the
    // WebUI's own hidden refresh buttons, so new cards are there when the user looks.
    function refreshCards() {
        ['txt2img', 'img2img'].forEach(function(tab) {
            ['textual_inversion', 'perfusion'].forEach(function(page) {
                var button = gradioApp().getElementById(tab + '_' + page + '_extra_refresh_internal');
                if (button) {
                    button.dispatchEvent(new Event('click'));
                }
            });
        });
    }

    // Gradio's run handler: give the job a task id and follow it with the WebUI's progress bar.
    // Gradio hands the pre-processor the inputs followed by the current outputs; gradio 4 refuses
    // a call with more values than inputs, so only the first `count` go back.
    function start(count, values) {
        var id = randomId();
        var box = live();
        if (box) {
            box.textContent = 'Starting...';
        }
        requestProgress(id, gradioApp().getElementById('captinv_output'), gradioApp().getElementById('captinv_preview'), function() {
            var done = live();
            if (done) {
                done.innerHTML = '';
            }
            refreshCards();
        }, function(progress) {
            showProgress(progress.textinfo);
        });
        var args = Array.from(values).slice(0, count);
        args[0] = id;
        return args;
    }

    function setPrompt(text, append) {
        var textarea = gradioApp().querySelector('#txt2img_prompt textarea');
        var current = textarea.value.replace(/[\s,]+$/, '');
        textarea.value = append && current ? current + ', ' + text : text;
        updateInput(textarea);
        switch_to_txt2img();
    }

    // Append a name to the txt2img prompt and switch to that tab.
    function sendToPrompt(name) {
        setPrompt(name, true);
    }

    // Put the whole learned sentence in the txt2img prompt (the negative prompt is left alone).
    function sendToTxt2img(sentence) {
        setPrompt(sentence, false);
    }

    // When a message asks the user to type the caption (no captioner can run), put the cursor there.
    function focusCaptionOnRequest(mutations) {
        var asked = mutations.some(function(mutation) {
            return Array.from(mutation.addedNodes).some(function(node) {
                return node.querySelector && (node.matches('.captinv-type-caption') || node.querySelector('.captinv-type-caption'));
            });
        });
        var box = gradioApp().querySelector('#captinv_caption textarea');
        if (asked && box) {
            box.focus();
        }
    }

    function setControl(id, value) {
        var box = gradioApp().querySelector('#' + id + ' textarea, #' + id + ' input');
        if (box) {
            box.value = value;
            updateInput(box);
        }
    }

    function openTab() {
        var buttons = gradioApp().querySelectorAll('#tabs .tab-nav button');
        Array.from(buttons).forEach(function(button) {
            if (button.textContent.trim() === 'Invert from Caption') {
                button.click();
            }
        });
    }

    // "Continue from this embedding": open a captinv set in the tab for a second round, with its
    // caption and options (from the file's metadata); the photos are dropped again.
    function continueFrom(name) {
        fetch('./captinv/v1/set?name=' + encodeURIComponent(name)).then(function(response) {
            return response.ok ? response.json() : null;
        }).then(function(set) {
            if (!set) {
                return;
            }
            setControl('captinv_continue_from', set.name);
            setControl('captinv_caption', set.caption);
            setControl('captinv_name', '');
            Object.keys(set.options).forEach(function(key) {
                setControl('captinv_' + key, set.options[key]);
            });
            openTab();
            // show Continue from: it sits under Advanced
            var advanced = gradioApp().querySelector('#captinv_advanced > .label-wrap');
            if (advanced && !advanced.classList.contains('open')) {
                advanced.click();
            }
        });
    }

    // A button on the Extra Networks card of every captinv set (its combined NAME-all embedding,
    // which captinv keeps under embeddings/captinv/).
    function addContinueButtons() {
        gradioApp().querySelectorAll('.card[data-name$="-all"]').forEach(function(card) {
            var terms = card.querySelector('.search_terms');
            var row = card.querySelector('.button-row');
            if (!row || !terms || terms.textContent.indexOf('captinv') < 0 || card.querySelector('.captinv-continue')) {
                return;
            }
            var button = document.createElement('div');
            button.className = 'captinv-continue';
            button.title = 'Continue from this embedding: train this set further in Invert from Caption';
            button.textContent = '\u21bb';
            button.addEventListener('click', function(event) {
                event.stopPropagation();
                continueFrom(card.dataset.name);
            });
            row.appendChild(button);
        });
    }

    onUiUpdate(addContinueButtons);

    onUiLoaded(function() {
        var info = gradioApp().getElementById('captinv_info');
        if (info) {
            new MutationObserver(focusCaptionOnRequest).observe(info, {childList: true, subtree: true});
        }
    });

    return {start: start, sendToPrompt: sendToPrompt, sendToTxt2img: sendToTxt2img, continueFrom: continueFrom};
})();
