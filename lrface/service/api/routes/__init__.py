"""One router per resource: synthesize, embed (+ verify), jobs, health."""
