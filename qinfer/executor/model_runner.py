"""ModelRunner: loads the model, owns the KV cache and the persistent batch, runs one step.

execute_model(scheduler_output): update the persistent batch from the step's
deltas, build the flat inputs, run the model under a forward context carrying
the attention metadata, compute logits only where a token is sampled, sample
the whole batch on the device and bring the sampled ids to the host once.

execute_model_async(scheduler_output) (async scheduling) returns before the ids
reach the host: they are copied without blocking and handed over by the returned
AsyncModelRunnerOutput, while the next step, launched meanwhile, takes them as its
inputs on the device (InFlightIds).
"""
from __future__ import annotations

import contextlib
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from transformers import AutoConfig, GenerationConfig

from qinfer.distributed.parallel_state import rank_device, set_tp_group
from qinfer.contracts.engine_config import EngineConfig
from qinfer.contracts.runner_output import AsyncModelRunnerOutput, ModelRunnerOutput, PromptLogprobs, TokenLogprobs
from qinfer.contracts.scheduler_output import SchedulerOutput
from qinfer.executor.cuda_graphs import StepCudaGraphs
from qinfer.executor.input_batch import InFlightIds, InputBatch, PromptLogprobsPlan, StepInputs
from qinfer.executor.sampler import LogprobsTensors, Sampler, SamplerOutput, prompt_logprobs, worst_case_metadata
from qinfer.executor.weight_loader import load_weights
from qinfer.layers.attention import get_attention_backend, is_attention_backend_importable
from qinfer.layers.attention.backend import AttentionMetadata
from qinfer.layers.attention.forward_context import set_forward_context
from qinfer.layers.attention.layer import Attention
from qinfer.layers.linear import pack_linears_for_cpu
from qinfer.models.registry import get_model_class
from qinfer.ops import cpu_compiled

# Prompt positions whose logprobs one LM-head call computes: bounds the [rows, vocab] float32 blocks.
_PROMPT_LOGITS_CHUNK = 256


# Mixed steps of up to this many tokens run from CUDA graphs by default; larger ones keep the GPU
# busy longer than their eager launches take (bench/NOTES.md, mixed-step graphs).
DEFAULT_MAX_CUDAGRAPH_TOKENS = 512


# Rows a CPU step's linears are packed for (a layout hint: other counts run too, about as fast).
CPU_PACK_BATCH_HINT = 64


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def resolve_max_model_len(config: EngineConfig, hf_config) -> int:
    model_max = hf_config.max_position_embeddings
    if config.max_model_len is not None and config.max_model_len > model_max:
        raise ValueError(f"max_model_len={config.max_model_len} exceeds the model's "
                         f"max_position_embeddings={model_max}")
    return config.max_model_len or model_max


def select_attention_backend(config: EngineConfig, device: torch.device) -> str:
    if config.attention_backend:
        return config.attention_backend
    if device.type == "cuda" and is_attention_backend_importable("triton"):
        return "triton"
    return "sdpa"


def eos_token_ids(model_dir: str, hf_config) -> list[int]:
    """EOS ids of config.json and generation_config.json (which may list several)."""
    ids = [hf_config.eos_token_id]
    with contextlib.suppress(OSError):
        ids.append(GenerationConfig.from_pretrained(model_dir).eos_token_id)
    flat = [i for entry in ids if entry is not None for i in (entry if isinstance(entry, list) else [entry])]
    return sorted(set(flat))


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def load_model(model_dir: str, hf_config, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Build the model directly on `device` in `dtype`, then stream the checkpoint into it."""
    with default_dtype(dtype), device:
        model = get_model_class(hf_config)(hf_config)
    load_weights(model, model_dir)
    return model.eval()


class ModelRunner:
    def __init__(self, config: EngineConfig, rank: int = 0, world_size: int = 1):
        self.config, self.rank, self.world_size = config, rank, world_size
        self.device = torch.device(config.device)
        if world_size > 1:
            self.device = rank_device(self.device.type, rank)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.hf_config = AutoConfig.from_pretrained(config.model)
        self.max_model_len = resolve_max_model_len(config, self.hf_config)
        set_tp_group(rank, world_size)
        self.model = load_model(config.model, self.hf_config, self.dtype, self.device)
        if self.device.type == "cpu":
            pack_linears_for_cpu(self.model, CPU_PACK_BATCH_HINT)
            cpu_compiled.available()      # builds the CPU kernels (once per machine) before the first step
        self.attn_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.attn_backend = get_attention_backend(select_attention_backend(config, self.device))
        self.input_batch = InputBatch(config.max_num_seqs, self.max_model_len, config.block_size,
                                      self.hf_config.vocab_size, self.device,
                                      eos_token_ids(config.model, self.hf_config))
        self.sampler = Sampler(self.device, config.seed)
        self.kv_cache: Optional[torch.Tensor] = None
        self.cuda_graphs: Optional[StepCudaGraphs] = None  # captured in init_kv_cache
        self.follower_sampling_rows = np.empty(0, dtype=np.int64)  # TP rank > 0: rows that sampled last step
        self.in_flight: Optional[InFlightIds] = None   # execute_model_async: the last step's sampled ids

    # ---- KV cache --------------------------------------------------------------------------

    @property
    def sliding_window(self) -> Optional[int]:
        """The window every attention layer shares (the block manager frees blocks behind it);
        None when some layer sees the whole context."""
        windows = {layer.sliding_window for layer in self.attn_layers}
        return windows.pop() if len(windows) == 1 else None

    def kv_cache_shape(self, num_blocks: int) -> tuple[int, ...]:
        """[num_layers, 2 (K, V), num_blocks, block_size, num_kv_heads, head_size] (this rank's heads)."""
        layer = self.attn_layers[0]
        return (len(self.attn_layers), 2, num_blocks, self.config.block_size, layer.num_kv_heads, layer.head_size)

    def bytes_per_block(self) -> int:
        shape = self.kv_cache_shape(1)
        return torch.Size(shape).numel() * self.dtype.itemsize

    def determine_num_kv_blocks(self) -> int:
        if self.config.num_kv_blocks is not None:
            return self.config.num_kv_blocks
        if self.device.type == "cuda":
            budget = self._profile_cuda_kv_budget()
        else:
            budget = self.config.cpu_kv_cache_gb * 2**30
        num_blocks = int(budget // self.bytes_per_block())
        if num_blocks < 1:
            raise RuntimeError(f"no memory left for the KV cache (budget {budget / 2**30:.2f} GiB); "
                               "raise gpu_memory_utilization / cpu_kv_cache_gb or lower max_num_batched_tokens")
        return num_blocks

    def init_kv_cache(self, num_blocks: int) -> None:
        """One tensor for every layer; each Attention layer gets its K and V views."""
        self.kv_cache = torch.zeros(self.kv_cache_shape(num_blocks), dtype=self.dtype, device=self.device)
        self._bind_kv_cache(self.kv_cache)
        if self._use_cuda_graphs():
            self.cuda_graphs = StepCudaGraphs(self.model, self.attn_backend, self.config.max_num_seqs,
                                              self._max_cudagraph_tokens(), self.max_model_len,
                                              self.config.block_size, self.device)
            self.cuda_graphs.capture()  # after the cache exists: graphs bake in its addresses

    def _use_cuda_graphs(self) -> bool:
        # Backends that read lengths on the host (.tolist()) cannot be captured.
        # Under TP every rank captures the same buckets in the same order, NCCL all-reduces included.
        return self.device.type == "cuda" and not self.config.enforce_eager and self.attn_backend.is_graph_safe

    def _max_cudagraph_tokens(self) -> int:
        limit = self.config.max_cudagraph_tokens
        if limit is not None and limit < 0:
            raise ValueError(f"max_cudagraph_tokens={limit} must be >= 0 (0: graphs for decode-only steps only)")
        return min(self.config.max_num_batched_tokens, DEFAULT_MAX_CUDAGRAPH_TOKENS if limit is None else limit)

    def _bind_kv_cache(self, kv_cache: torch.Tensor) -> None:
        for layer, layer_cache in zip(self.attn_layers, kv_cache):
            layer.k_cache, layer.v_cache = layer_cache[0], layer_cache[1]

    # ---- memory profiling (cuda) ---------------------------------------------------------------

    def _profile_cuda_kv_budget(self) -> float:
        """Bytes left for the KV cache: utilization share of the GPU minus what is in use
        (weights, CUDA context, other processes) minus the activation peak of a full step."""
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        baseline = torch.cuda.memory_allocated(self.device)
        self._profile_forward()
        torch.cuda.synchronize(self.device)
        activation_peak = torch.cuda.max_memory_allocated(self.device) - baseline
        torch.cuda.empty_cache()
        free, total = torch.cuda.mem_get_info(self.device)
        return total * self.config.gpu_memory_utilization - (total - free) - activation_peak

    def _profile_forward(self) -> None:
        """A step of max_num_batched_tokens prefill tokens against a one-block dummy cache
        (slots -1: nothing written; every context read from block 0), then the sampler with
        every stage on over max_num_seqs rows."""
        num_tokens = self.config.max_num_batched_tokens
        lens = [min(self.max_model_len, num_tokens - start) for start in range(0, num_tokens, self.max_model_len)]
        seq_lens = torch.tensor(lens, dtype=torch.int32, device=self.device)
        meta = AttentionMetadata(
            slot_mapping=torch.full((num_tokens,), -1, dtype=torch.long, device=self.device),
            query_start_loc=torch.nn.functional.pad(seq_lens.cumsum(0, dtype=torch.int32), (1, 0)),
            seq_lens=seq_lens,
            block_tables=torch.zeros(len(lens), -(-max(lens) // self.config.block_size),
                                     dtype=torch.int32, device=self.device),
            # no cached tokens: the backend takes its fresh-prefill path here, so that kernel
            # compiles now, not at the first long fresh prompt mid-traffic
            max_query_len=max(lens), max_seq_len=max(lens), num_prefills=len(lens), prefills_are_fresh=True)
        positions = torch.cat([torch.arange(n, device=self.device) for n in lens])
        self._bind_kv_cache(torch.zeros(self.kv_cache_shape(1), dtype=self.dtype, device=self.device))
        with torch.inference_mode(), set_forward_context(meta, self.attn_backend):
            hidden = self.model(torch.zeros(num_tokens, dtype=torch.long, device=self.device), positions)
            logits = self.model.compute_logits(hidden[:self.config.max_num_seqs])  # None off the TP driver
            if logits is not None:   # a sampler of its own: the engine's random stream stays untouched
                Sampler(self.device, 0)(logits, worst_case_metadata(logits.shape[0], self.device))
        if self.kv_cache is not None:
            self._bind_kv_cache(self.kv_cache)

    # ---- one step --------------------------------------------------------------------------

    @torch.inference_mode()
    def execute_model(self, scheduler_output: SchedulerOutput) -> ModelRunnerOutput:
        """The step on the driver (rank 0, or the only rank): forward, sample, return the ids."""
        inputs, sampler_output, prompt_tensors = self._run_step(scheduler_output)
        if inputs is None:
            return ModelRunnerOutput()
        sampled = sampler_output.sampled_token_ids.tolist() if sampler_output else []  # the one host transfer
        self.input_batch.append_sampled(inputs.sampling_rows, sampled)
        sampled_logprobs = sampler_output.logprobs if sampler_output else None
        return self._runner_output(inputs, sampled, self._sampled_logprobs(inputs, sampled_logprobs),
                                   _prompt_logprobs(inputs.prompt_logprobs, prompt_tensors))

    @torch.inference_mode()
    def execute_model_async(self, scheduler_output: SchedulerOutput) -> AsyncModelRunnerOutput:
        """The step on the only rank, returning before its ids reach the host.

        Call get() on a step's output before launching the step after the next one: the ids
        of one step at most are in flight.
        """
        in_flight, self.in_flight = self.in_flight, None
        inputs, sampler_output, prompt_tensors = self._run_step(scheduler_output, in_flight)
        if sampler_output is None:   # nothing sampled: an empty plan, or prefill chunks only
            output = ModelRunnerOutput()
            if inputs:
                output = self._runner_output(inputs, [], [], _prompt_logprobs(inputs.prompt_logprobs, prompt_tensors))
            return AsyncModelRunnerOutput(lambda: output)
        sampling_req_ids = [inputs.req_ids[i] for i in np.flatnonzero(inputs.is_sampling).tolist()]
        serials = self.input_batch.serials[inputs.sampling_rows]
        output = AsyncModelRunnerOutput(self._resolver(inputs, sampler_output, prompt_tensors, sampling_req_ids,
                                                       serials))
        self.in_flight = InFlightIds(sampler_output.sampled_token_ids, sampling_req_ids, serials, output.get)
        return output

    def _resolver(self, inputs: StepInputs, sampler_output: SamplerOutput, prompt_tensors: Optional[LogprobsTensors],
                  sampling_req_ids: list[str], serials: np.ndarray) -> Callable[[], ModelRunnerOutput]:
        """Start the host copy of the step's sampled ids; the returned call waits for it and
        writes the ids into the persistent batch (by request: rows move before it runs)."""
        host_copy = _copy_to_host(sampler_output, prompt_tensors)
        positions = self.input_batch.reserve_sampled(inputs.sampling_rows)
        logprobs_k = self.input_batch.num_logprobs[inputs.sampling_rows]

        def resolve() -> ModelRunnerOutput:
            host_sampler_output, host_prompt_tensors = host_copy.wait()
            sampled = host_sampler_output.sampled_token_ids.tolist()
            self.input_batch.write_sampled(sampling_req_ids, serials, positions, sampled)
            return self._runner_output(inputs, sampled, _logprobs(host_sampler_output.logprobs, logprobs_k),
                                       _prompt_logprobs(inputs.prompt_logprobs, host_prompt_tensors))

        return resolve

    def _run_step(self, scheduler_output: SchedulerOutput, in_flight: Optional[InFlightIds] = None
                  ) -> tuple[Optional[StepInputs], Optional[SamplerOutput], Optional[LogprobsTensors]]:
        """Apply the plan, run the forward and the sampler: all None for an empty plan, no
        SamplerOutput when nothing samples; the prompt logprobs asked for this step's positions."""
        self.input_batch.update(scheduler_output)
        if scheduler_output.is_empty:
            return None, None, None
        inputs = self.input_batch.prepare(scheduler_output, in_flight)
        logits, prompt_tensors = self._forward(inputs)
        if logits is None:
            return inputs, None, prompt_tensors
        md = self.input_batch.sampling_metadata(inputs.sampling_rows, in_flight)
        return inputs, self.sampler(logits, md), prompt_tensors

    @torch.inference_mode()
    def execute_model_follower(self, scheduler_output: SchedulerOutput, driver_sampled_ids: list[int]) -> None:
        """The step on a TP rank > 0: the same forward (its collectives), no sampling.

        driver_sampled_ids: what the driver sampled in the previous step, in its row order; they
        come with this step's plan and are appended first, so every rank knows the same tokens.
        """
        if len(driver_sampled_ids) != len(self.follower_sampling_rows):
            raise RuntimeError(f"TP rank {self.rank} is out of step with the driver: it sampled "
                               f"{len(driver_sampled_ids)} ids, this rank expected {len(self.follower_sampling_rows)}")
        self.input_batch.append_sampled(self.follower_sampling_rows, driver_sampled_ids)
        self.follower_sampling_rows = np.empty(0, dtype=np.int64)
        self.input_batch.update(scheduler_output)
        if scheduler_output.is_empty:
            return
        inputs = self.input_batch.prepare(scheduler_output)
        self._forward(inputs)
        self.follower_sampling_rows = inputs.sampling_rows

    def _forward(self, inputs: StepInputs) -> tuple[Optional[torch.Tensor], Optional[LogprobsTensors]]:
        """Logits [S, V] of the positions that sample (None if none does, or off the TP driver),
        and the logprobs of the prompt positions that asked (None if none did, or off the driver)."""
        hidden = self._run_model(inputs)
        prompt_tensors = self._prompt_logprobs(hidden, inputs.prompt_logprobs) if inputs.prompt_logprobs else None
        if not len(inputs.sampling_rows):
            return None, prompt_tensors
        return self.model.compute_logits(hidden[inputs.logits_indices]), prompt_tensors

    def _prompt_logprobs(self, hidden: torch.Tensor, plan: PromptLogprobsPlan) -> Optional[LogprobsTensors]:
        """The LM head on the plan's prompt positions (only there: the fast path runs it on the last
        position of each request), chunk by chunk; every TP rank takes part in each call."""
        chunks = []
        for start in range(0, len(plan.next_token_ids), _PROMPT_LOGITS_CHUNK):
            rows = slice(start, start + _PROMPT_LOGITS_CHUNK)
            logits = self.model.compute_logits(hidden[plan.logits_indices[rows]])
            if logits is not None:
                chunks.append(prompt_logprobs(logits, plan.next_token_ids[rows], plan.max_num_logprobs))
        if not chunks:
            return None
        return LogprobsTensors(*(torch.cat(parts) for parts in zip(*chunks)))

    def _run_model(self, inputs: StepInputs) -> torch.Tensor:
        meta = inputs.attn_metadata
        if self.cuda_graphs is not None and self.cuda_graphs.can_run(meta, inputs.input_ids.shape[0]):
            return self.cuda_graphs.run(inputs.input_ids, inputs.positions, meta)
        with set_forward_context(meta, self.attn_backend):
            return self.model(inputs.input_ids, inputs.positions)

    def _runner_output(self, inputs: StepInputs, sampled: list[int], logprobs: list[Optional[TokenLogprobs]],
                       prompt_logprobs: dict[str, PromptLogprobs]) -> ModelRunnerOutput:
        if len(sampled) == len(inputs.req_ids):   # every request sampled (any decode-only step)
            return ModelRunnerOutput(inputs.req_ids, [[t] for t in sampled], logprobs, prompt_logprobs)
        sampled_iter, logprobs_iter = iter(sampled), iter(logprobs)
        output = ModelRunnerOutput(req_ids=inputs.req_ids, prompt_logprobs=prompt_logprobs)
        for is_sampling in inputs.is_sampling.tolist():   # Python bools: numpy scalars iterate slowly
            output.sampled_token_ids.append([next(sampled_iter)] if is_sampling else [])
            output.logprobs.append(next(logprobs_iter) if is_sampling else None)
        return output

    def _sampled_logprobs(self, inputs: StepInputs, tensors: Optional[LogprobsTensors]) -> list[Optional[TokenLogprobs]]:
        return _logprobs(tensors, self.input_batch.num_logprobs[inputs.sampling_rows])


def _logprobs(tensors: Optional[LogprobsTensors], num_logprobs) -> list[Optional[TokenLogprobs]]:
    """TokenLogprobs per row, its first num_logprobs[i] top entries (None where k < 0: not asked);
    copied to Python only when someone asked."""
    if tensors is None:
        return [None] * len(num_logprobs)
    token_ids, logprobs, ranks = tensors.token_ids.tolist(), tensors.logprobs.tolist(), tensors.ranks.tolist()
    return [None if k < 0 else TokenLogprobs(token_ids[i][:k + 1], logprobs[i][:k + 1], ranks[i])
            for i, k in enumerate(np.asarray(num_logprobs).tolist())]


def _prompt_logprobs(plan: Optional[PromptLogprobsPlan], tensors: Optional[LogprobsTensors]
                     ) -> dict[str, PromptLogprobs]:
    """The plan's rows, on the host, as PromptLogprobs per request."""
    if plan is None or tensors is None:
        return {}
    positions = _logprobs(tensors, np.repeat(plan.num_logprobs, plan.counts))
    ends = np.cumsum(plan.counts).tolist()
    return {req_id: PromptLogprobs(start, positions[end - count:end])
            for req_id, start, count, end in zip(plan.req_ids, plan.starts, plan.counts, ends)}


def _to_host(tensors):
    """A NamedTuple of device tensors (or None) copied to the host without waiting."""
    return None if tensors is None else type(tensors)(*(t.to("cpu", non_blocking=True) for t in tensors))


class _HostCopy(NamedTuple):
    # On the host (pinned memory on cuda), complete once `event` is.
    sampler_output: SamplerOutput
    prompt_logprobs: Optional[LogprobsTensors]
    event: Optional[torch.cuda.Event]        # None: the copy was synchronous (CPU device)

    def wait(self) -> tuple[SamplerOutput, Optional[LogprobsTensors]]:
        if self.event is not None:
            self.event.synchronize()
        return self.sampler_output, self.prompt_logprobs


def _copy_to_host(sampler_output: SamplerOutput, prompt_tensors: Optional[LogprobsTensors]) -> _HostCopy:
    """Start copying the sampler's tensors to the host without waiting (non_blocking device-to-host
    copies land in pinned memory); the event says when they are there."""
    host = SamplerOutput(sampler_output.sampled_token_ids.to("cpu", non_blocking=True),
                         _to_host(sampler_output.logprobs))
    host_prompt = _to_host(prompt_tensors)
    event = None
    if sampler_output.sampled_token_ids.is_cuda:
        event = torch.cuda.Event()
        event.record()
    return _HostCopy(host, host_prompt, event)
