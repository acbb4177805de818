"""reForge (Panchovix, `main`): A1111's ldm/sgm shells and hijacked embedding database over
ComfyUI-derived `ldm_patched` weights, whose UNet, CLIP and VAE belong to patchers and a memory
manager. Forge Classic is built the same way."""
