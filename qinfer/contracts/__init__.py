"""The contracts between the engine and the executor, imported by both and importing neither.

engine_config: every knob of one engine; scheduler_output: the plan of one step (engine ->
executor); runner_output: what a step sampled (executor -> engine); sampling_metadata: the
per-row sampling tensors the runner builds from the plan for its sampler.
"""
