"""Datasets on disk, read as distributed: CoOp split files, VTAB-1k txt lists, FGVC JSON, ImageFolder and CSV.

Each format parses its split files into a ParsedDataset (parsed.py; common.py re-exports the shared pieces) that
records problems with file and line;
catalog.py registers the dataset names; vlprompt.data.check reports every problem of a dataset at once.
"""
