"""imgpipe, the application: the command line, orchestration, ingest and the demo.

The ML system lives in the top-level packages it is known by: pipeline/ (the
DAG and its config schema), components/ (custom TFX components), trainer/
(model code TFX runs) and serving/ (export helpers, client, dev server). This
package is what a person runs; imports point one way:
imgpipe -> pipeline -> components -> trainer -> serving's export helpers.
"""
