"""vlprompt: prompt learning on frozen vision and vision-language transformers."""
__version__ = "0.1.0"
