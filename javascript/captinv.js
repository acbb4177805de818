// captinv: one namespaced global; every element it touches has a captinv_ id.
var captinv = (function() {
    // Gradio's run handler: give the job a task id and follow it with the WebUI's progress bar.
    function start() {
        gradioApp().querySelector('#captinv_info').innerHTML = '';
        var id = randomId();
        requestProgress(id, gradioApp().getElementById('captinv_output'), gradioApp().getElementById('captinv_preview'), function() {}, function(progress) {
            gradioApp().getElementById('captinv_progress').innerHTML = progress.textinfo || '';
        });
        var args = Array.from(arguments);
        args[0] = id;
        return args;
    }

    // Append a name to the txt2img prompt and switch to that tab.
    function sendToPrompt(name) {
        var textarea = gradioApp().querySelector('#txt2img_prompt textarea');
        var current = textarea.value.replace(/[\s,]+$/, '');
        textarea.value = current ? current + ', ' + name : name;
        updateInput(textarea);
        switch_to_txt2img();
    }

    // The image component drops the file name; fill the name box from it when it is empty.
    function nameFromDroppedFile(event) {
        var input = event.target;
        if (!input || input.type !== 'file' || !input.files || !input.files.length) {
            return;
        }
        var box = gradioApp().querySelector('#captinv_name textarea');
        if (box && !box.value) {
            box.value = input.files[0].name.replace(/\.[^.]+$/, '');
            updateInput(box);
        }
    }

    onUiLoaded(function() {
        var image = gradioApp().getElementById('captinv_image');
        if (image) {
            image.addEventListener('change', nameFromDroppedFile, true);
        }
    });

    return {start: start, sendToPrompt: sendToPrompt};
})();
