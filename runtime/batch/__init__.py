"""The batch job behind `python -m runtime`: items in, one result record per item out, resumable.

    items.py      inputs -> items (files, folders, PDF pages, TIFF frames), named and fingerprinted
    sources.py    an item -> a decoded image (pixel limit, optional EXIF rotation); pdf.py for PDF pages
    pipeline.py   bounded prefetch (decode, render, preprocess) overlapping inference; batches -> records
    results.py    the results file: header, append + fsync, torn-line repair, resume matching (lock.py)
    outputs.py    side files (text, annotations, searchable PDFs), each written to a temporary name, renamed
    progress.py   the progress bar or status line on stderr, and the summary line
    job.py        the job: options checked once, the run loop, Ctrl-C

Nothing here is imported by `runtime` itself; pypdfium2, pypdf and tqdm are optional extras, imported
when a job needs them.
"""
