"""The workflow file format: what a workflow says and whether it is right.

YAML read with the position of every value (:mod:`.yamlsource`), the spec's
models (:mod:`.spec`), located diagnostics, the agent graph (:mod:`.graph`,
stdlib only), templates and expressions (:mod:`.templates`), output schemas
and their ``$ref`` s, the loader that checks a file in passes, and run-time
inputs. Nothing here calls a model, reads the engine config or keeps state.
"""
