"""forgetting: the library behind the pipeline's stages, in five wings (`data`, `demo`, `training`, `methods`,
`evaluation`) over a few cross-cutting modules at the top (`params`, `schema`, `layout`, `curves`, `io`, `errors`,
`machine`).

It knows nothing of DVC or of argument parsing: `stages/` holds the entry points that `dvc.yaml` runs.
"""
