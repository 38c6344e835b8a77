"""Bulk jobs, one module per concern:

- `params`: what a job is (JobParams, ids, states) and JobInputError, the refusal of a job request;
- `store`: its state in Redis (JobStore, the key layout);
- `inputs`: safe input folders under the data root and the planning of their sources;
- `archives`: uploaded zip / tar archives unpacked safely;
- `lifecycle`: submission (plan, store, fan out into chunk tasks), purge and retention;
- `recovery`: chunk tasks the broker lost, queued again by the sweeper.

Nothing here holds pixels: tasks get (job id, chunk index, relative paths) and read the files themselves.
"""
