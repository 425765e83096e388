"""Connections to Redis: one plain `redis://` URL of any node, standalone or cluster.

A node of a Redis Cluster answers `INFO cluster` with `cluster_enabled:1`; the client then
is redis-py's RedisCluster, which routes each command (and each single-slot script and
MULTI/EXEC) to the node that owns its keys' slot. Everything else gets a plain Redis.
"""
from __future__ import annotations

import redis
import redis.asyncio as aioredis
import redis.asyncio.cluster as aiocluster
import redis.cluster


def is_cluster(url: str) -> bool:
    """Whether url is a cluster node; False when it cannot be asked (the plain client's first
    command then fails with the usual error)."""
    probe = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        return bool(probe.info("cluster").get("cluster_enabled"))
    except redis.RedisError:
        return False
    finally:
        probe.close()


def connect(url: str, **kwargs):
    """A sync client for url: redis.Redis, or redis.cluster.RedisCluster on a cluster node."""
    if is_cluster(url):
        return redis.cluster.RedisCluster.from_url(url, **kwargs)
    return redis.Redis.from_url(url, **kwargs)


def connect_async(url: str, **kwargs):
    """An asyncio client for url (the probe itself is one short synchronous round trip)."""
    if is_cluster(url):
        return aiocluster.RedisCluster.from_url(url, **kwargs)
    return aioredis.Redis.from_url(url, **kwargs)


def register_script(client, source: str):
    """A Lua script callable as script(keys, args, client=client_or_pipeline).

    On one node: redis-py's Script (EVALSHA, reloaded when the server lost it). On a cluster:
    EVAL with the source, since redis-py's cluster pipelines refuse EVALSHA and a node's
    script cache does not survive its restart; the server caches the compiled script by its
    digest, so only the source's bytes are sent again.
    """
    if isinstance(client, (redis.cluster.RedisCluster, aiocluster.RedisCluster)):
        return _ClusterScript(client, source)
    return client.register_script(source)


class _ClusterScript:
    def __init__(self, client, source: str):
        self.client, self.source = client, source

    def __call__(self, keys=(), args=(), client=None):
        reply = (client or self.client).execute_command("EVAL", self.source, len(keys), *keys, *args)
        # an asyncio cluster pipeline queues the command and returns itself, not an awaitable
        return _queued(reply) if isinstance(reply, aiocluster.ClusterPipeline) else reply


async def _queued(pipeline):
    """What awaiting a command queued on an asyncio cluster pipeline gives: the pipeline. Not
    `await pipeline`: that re-initializes it and drops the commands queued so far."""
    return pipeline
