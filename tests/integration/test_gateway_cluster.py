"""The gateway on a real three-node Redis Cluster, given one node's plain URL: two models whose
keys live on different shards, interactive requests (plain and streamed) to each, and one batch
whose lines go to both, completed with every line answered once."""
from collections import Counter

import pytest
from redis.cluster import RedisCluster

from qinfer.fleet import Fleet
from qinfer.queue.keys import Keys
from tests.fixtures_redis import TEST_ENV
from tests.integration.gateway_support import REPO, GatewayProcess, batch_file, jsonl, wait_batch
from tests.integration.test_cluster import _node_of, _two_models_on_two_shards


@pytest.fixture(scope="module")
def models(redis_cluster):
    return _two_models_on_two_shards(RedisCluster.from_url(redis_cluster.url))


@pytest.fixture(scope="module")
def gateway(redis_cluster, tiny_llama_dir, models, tmp_path_factory):
    fleets = [Fleet(tiny_llama_dir, redis_cluster.url, 1, env={**TEST_ENV, "PYTHONPATH": str(REPO)},
                    worker_args=("--served-model-name", name, "--num-kv-blocks", "256", "--max-num-seqs", "8"))
              for name in models]
    for fleet in fleets:
        fleet.start()
    for fleet in fleets:
        fleet.wait_ready()
    gateway = GatewayProcess(redis_cluster.url, tmp_path_factory.mktemp("files")).start()
    yield gateway
    gateway.stop()
    for fleet in fleets:
        fleet.stop(timeout=30)


def test_the_models_live_on_two_shards(redis_cluster, models):
    cluster = RedisCluster.from_url(redis_cluster.url)
    assert _node_of(cluster, Keys().queue(models[0], 0)) != _node_of(cluster, Keys().queue(models[1], 0))


def test_chat_plain_and_streamed_reach_either_shard(gateway, models):
    client = gateway.openai()
    assert set(models) <= {m.id for m in client.models.list()}
    for model in models:
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                                max_tokens=6, temperature=0)
        assert answer.usage.completion_tokens == 6 or answer.choices[0].finish_reason == "stop"
        chunks = list(client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}],
                                                     max_tokens=6, temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == answer.choices[0].message.content


def test_a_batch_over_both_shards_completes_every_line_once(gateway, models):
    client = gateway.openai()
    lines = [{"custom_id": f"c{i}", "method": "POST", "url": "/v1/chat/completions",
              "body": {"model": models[i % 2], "messages": [{"role": "user", "content": f"Line {i}"}],
                       "max_tokens": 5, "temperature": 0}} for i in range(8)]
    uploaded = client.files.create(file=("in.jsonl", batch_file(lines)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(client, batch.id, ("completed", "failed"), timeout=120)
    assert done.status == "completed"
    assert done.request_counts.model_dump() == {"total": 8, "completed": 8, "failed": 0}
    output = jsonl(client.files.content(done.output_file_id).text)
    assert Counter(o["custom_id"] for o in output) == Counter(l["custom_id"] for l in lines)
    assert {o["response"]["body"]["model"] for o in output} == set(models)
