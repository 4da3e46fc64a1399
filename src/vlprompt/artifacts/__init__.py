"""Every file a run writes, and reading them back: the run folder (``run_dir``: names, fingerprint, lock),
prompt-only checkpoints (``checkpoint``), resume state (``resume_state``), portable folders (``pretrained``:
save_pretrained / from_pretrained) and the model card (``card``). ``files`` holds the names of artifact files
that a run folder does not name itself."""
