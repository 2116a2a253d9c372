"""Release pipelines: a TOML recipe (recipes/) -> every artifact of a model, validated, with a
sha256 manifest, Hugging Face model cards and a self-contained parity report.

recipe.py reads and checks recipes (schema.py holds the table of keys); formats.py is the table
of artifact formats (one row each); engine.py builds, validates, resumes, plans and collects jobs;
manifest.py, modelcard.py and report_html.py write the release files.
"""
