"""Lua scripts for the multi-key steps that must be atomic (or one round trip).

Every key a script touches is passed in KEYS (built by queue/keys.py), and every KEYS
list stays within one model's hash tag, so the scripts are legal on Redis Cluster.
"""

# KEYS: job, queue stream, queued counts (its 'seen' field: the model's last worker heartbeat),
# idempotency key. The models set is added to beside the call: it lives in the deployment's slot.
# ARGV: job_id, request_json, tokens, max_jobs, max_tokens, now, model, priority,
#       fingerprint ('' = no idempotency key), idempotency ttl, group,
#       live window s ('' = do not require a live worker for the model)
# Check the idempotency key, the model's liveness and the admission bounds before writing anything.
SUBMIT = """
if ARGV[9] ~= '' then
  local prev = redis.call('GET', KEYS[4])
  if prev then
    local sep = string.find(prev, ' ', 1, true)
    local prev_id = string.sub(prev, 1, sep - 1)
    if string.sub(prev, sep + 1) == ARGV[9] then return {'duplicate', prev_id} end
    return {'conflict', prev_id}
  end
end
if ARGV[12] ~= '' then
  local seen = tonumber(redis.call('HGET', KEYS[3], 'seen') or '0')
  if tonumber(ARGV[6]) - seen > tonumber(ARGV[12]) then
    return {'unknown_model', ''}     -- the client lists the live models (a cross-slot read)
  end
end
local jobs = tonumber(redis.call('HGET', KEYS[3], 'jobs') or '0')
local tokens = tonumber(redis.call('HGET', KEYS[3], 'tokens') or '0')
if jobs + 1 > tonumber(ARGV[4]) then return {'full_jobs', tostring(jobs)} end
if tokens + tonumber(ARGV[3]) > tonumber(ARGV[5]) then return {'full_tokens', tostring(tokens)} end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('XGROUP', 'CREATE', KEYS[2], ARGV[11], '0', 'MKSTREAM')
end
local entry = redis.call('XADD', KEYS[2], '*', 'id', ARGV[1])
redis.call('HSET', KEYS[1], 'request', ARGV[2], 'status', 'queued', 'model', ARGV[7],
           'priority', ARGV[8], 'queued_at', ARGV[6], 'attempts', '0', 'tokens', ARGV[3], 'entry', entry,
           'stream', KEYS[2])
redis.call('HINCRBY', KEYS[3], 'jobs', 1)
redis.call('HINCRBY', KEYS[3], 'tokens', ARGV[3])
if ARGV[9] ~= '' then redis.call('SET', KEYS[4], ARGV[1] .. ' ' .. ARGV[9], 'EX', ARGV[10]) end
return {'ok', ARGV[1]}
"""

# KEYS: job, cancel flag, done list, events stream, queued counts
# ARGV: now, ttl, cancel channel, job_id
# A queued job is cancelled here and now; a running one is flagged for its worker.
CANCEL = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return false end
if st == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', ARGV[1])
  local tokens = redis.call('HGET', KEYS[1], 'tokens')
  if tokens then
    redis.call('HINCRBY', KEYS[5], 'jobs', -1)
    redis.call('HINCRBY', KEYS[5], 'tokens', -tonumber(tokens))
  end
  redis.call('XADD', KEYS[4], '*', 'type', 'end', 'status', 'cancelled')
  redis.call('LPUSH', KEYS[3], 'cancelled')
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('EXPIRE', KEYS[3], ARGV[2])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
  return 'cancelled'
end
if st == 'running' then
  redis.call('SET', KEYS[2], '1', 'EX', ARGV[2])
  redis.call('PUBLISH', ARGV[3], ARGV[4])
end
return st
"""

# KEYS: queue streams in pull order. ARGV: group, consumer, n, steal_after_ms, own flags (one
# '1'/'0' per key). Pull at most n entries in key order; from a stream not marked own, only
# entries that have waited steal_after_ms or have another behind them (prefix affinity: a
# single job is its lane owner's first).
PULL = """
local out = {}
local left = tonumber(ARGV[3])
local t = redis.call('TIME')
local cutoff_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) - tonumber(ARGV[4])
-- How many of the next `left` undelivered entries of `key` another lane's worker may take:
-- those added by cutoff_ms (ids start with the server's clock in ms and grow: the leading
-- ones), or all but the newest while several wait (a burst spreads over the fleet at once).
local function stealable(key)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', key)
  if not ok then return 0 end
  for _, g in ipairs(groups) do
    local name, last
    for i = 1, #g, 2 do
      if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
    end
    if name == ARGV[1] then
      local waiting = redis.call('XRANGE', key, '(' .. last, '+', 'COUNT', left + 1)
      local n = 0
      for _, e in ipairs(waiting) do
        if tonumber(string.match(e[1], '^%d+')) > cutoff_ms then break end
        n = n + 1
      end
      return math.min(left, math.max(n, #waiting - 1))
    end
  end
  return 0
end
for i, key in ipairs(KEYS) do
  if left <= 0 then break end
  -- finished entries are deleted: an empty stream (most priorities, most of the time) has nothing
  local count = redis.call('XLEN', key) > 0 and left or 0
  if count > 0 and string.sub(ARGV[5], i, i) ~= '1' then count = stealable(key) end
  if count > 0 then
    local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', count,
                        'STREAMS', key, '>')
    if ok and r then
      for _, e in ipairs(r[1][2]) do
        out[#out + 1] = {key, e[1], e[2]}
        left = left - 1
      end
    end
  end
end
return out
"""

# KEYS: job, cancel flag. ARGV: worker, now, payload ('' = none), enqueued_at, model, priority
# Mark a delivered job running and count the delivery; report terminal ones untouched.
# A raw producer's entry (a payload, no job hash yet) first gets the job hash a submit writes
# (without `tokens`: it was not admitted by submit), so it is counted and dead-lettered alike.
START = """
local st = redis.call('HGET', KEYS[1], 'status')
if not st then
  if ARGV[3] == '' then return {false} end
  redis.call('HSET', KEYS[1], 'request', ARGV[3], 'status', 'queued', 'model', ARGV[5],
             'priority', ARGV[6], 'queued_at', ARGV[4], 'attempts', '0')
  st = 'queued'
end
if st ~= 'queued' and st ~= 'running' then return {st} end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'running', 'worker', ARGV[1], 'started_at', ARGV[2])
local f = redis.call('HMGET', KEYS[1], 'request', 'queued_at', 'last_error')
return {st, attempts, f[1], f[2], f[3] or '', redis.call('EXISTS', KEYS[2])}
"""

# KEYS: one queue stream per entry. ARGV: group, consumer, entry ids...
# Renew only entries this consumer still owns: XCLAIM alone would steal back
# an entry another worker reclaimed. Returns the 1-based indexes lost.
RENEW = """
local lost = {}
for i, key in ipairs(KEYS) do
  local id = ARGV[i + 2]
  local p = redis.call('XPENDING', key, ARGV[1], id, id, 1, ARGV[2])
  if #p == 1 then
    redis.call('XCLAIM', key, ARGV[1], ARGV[2], 0, id, 'JUSTID')
  else
    lost[#lost + 1] = i
  end
end
return lost
"""

# KEYS: queue streams, highest priority first. ARGV: group, consumer, min_idle_ms, count, cursors...
# Take over entries idle past the lease, resuming each stream's scan where the
# last call stopped. Returns {cursors, {key, entries} or false}.
RECLAIM = """
local cursors = {}
local found = false
for i, key in ipairs(KEYS) do
  local cursor = ARGV[i + 4]
  if not found then
    local ok, r = pcall(redis.call, 'XAUTOCLAIM', key, ARGV[1], ARGV[2], ARGV[3], cursor,
                        'COUNT', ARGV[4])
    if ok then
      cursor = r[1]
      if #r[2] > 0 then found = {key, r[2]} end
    end
  end
  cursors[i] = cursor
end
return {cursors, found}
"""

# KEYS: job hashes. Status, admission size, last writer and attempts of each, read under WATCH.
STATUSES = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HMGET', key, 'status', 'tokens', 'model', 'worker', 'attempts')
end
return out
"""

# KEYS: job. ARGV: last_error, graceful ('1': give the attempt back)
# Only a job still running goes back to queued; a terminal one stays as it is.
REQUEUE = """
if redis.call('HGET', KEYS[1], 'status') == 'running' then
  redis.call('HSET', KEYS[1], 'status', 'queued', 'last_error', ARGV[1])
  if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
end
"""

# KEYS: job, done list, events stream, cancel flag, queue stream, queued counts
# ARGV: status, ttl, tokens ('' = not admitted by submit: nothing to release), group, entry id,
#       then the job hash's field/value pairs
# A job's whole terminal write as one command of the worker's MULTI/EXEC: redis-py packing and
# parsing 11 commands a job was a third of the worker's time outside engine steps.
FINISH = """
redis.call('HSET', KEYS[1], unpack(ARGV, 6))
if ARGV[3] ~= '' then
  redis.call('HINCRBY', KEYS[6], 'jobs', -1)
  redis.call('HINCRBY', KEYS[6], 'tokens', -tonumber(ARGV[3]))
end
redis.call('XADD', KEYS[3], '*', 'type', 'end', 'status', ARGV[1])
redis.call('LPUSH', KEYS[2], ARGV[1])
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
redis.call('DEL', KEYS[4])
redis.call('XACK', KEYS[5], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[5], ARGV[5])
"""

# KEYS: job, queued counts (its 'seen' field: the model's last worker heartbeat), queue stream,
#       done list, events stream, queued counts, the callback outbox of the job's slot
# ARGV: now, timeout_s, ttl, group, entry id ('' = the job hash's), model, error JSON,
#       raw payload ('' = none), job id
# Fail a job still queued for a model no worker has served for timeout_s (a typo, or workers
# never came): called by the client's wait/stream and by every worker's sweep, so it works with
# no worker at all. Returns 1 if it failed the job. A raw entry first gets its job hash.
FAIL_UNSERVED = """
local now, timeout = tonumber(ARGV[1]), tonumber(ARGV[2])
local seen = tonumber(redis.call('HGET', KEYS[2], 'seen') or '0')
if now - seen < timeout then return 0 end
local h = redis.call('HMGET', KEYS[1], 'status', 'queued_at', 'tokens', 'request', 'entry')
if not h[1] then
  if ARGV[8] == '' or ARGV[5] == '' then return 0 end
  h = {'queued', tostring(tonumber(string.match(ARGV[5], '^%d+')) / 1000), false, ARGV[8], ARGV[5]}
  redis.call('HSET', KEYS[1], 'request', ARGV[8], 'model', ARGV[6], 'queued_at', h[2], 'attempts', '0')
end
if h[1] ~= 'queued' or now - tonumber(h[2] or now) < timeout then return 0 end
redis.call('HSET', KEYS[1], 'status', 'failed', 'error', ARGV[7], 'finished_at', ARGV[1])
if h[3] then
  redis.call('HINCRBY', KEYS[6], 'jobs', -1)
  redis.call('HINCRBY', KEYS[6], 'tokens', -tonumber(h[3]))
end
redis.call('XADD', KEYS[5], '*', 'type', 'end', 'status', 'failed')
redis.call('LPUSH', KEYS[4], 'failed')
for _, key in ipairs({KEYS[1], KEYS[4], KEYS[5]}) do redis.call('EXPIRE', key, ARGV[3]) end
local entry = ARGV[5] ~= '' and ARGV[5] or h[5]
if entry then
  redis.call('XACK', KEYS[3], ARGV[4], entry)
  redis.call('XDEL', KEYS[3], entry)
end
local ok, request = pcall(cjson.decode, h[4] or '')
if ok and type(request) == 'table' and type(request.callback_url) == 'string' and request.callback_url ~= '' then
  -- what queue/writer.py enqueue_callback writes, in this same atomic step
  redis.call('HSET', KEYS[1], 'callback', 'pending', 'callback_attempts', '0', 'callback_enqueued_at', ARGV[1])
  redis.call('XADD', KEYS[7], '*', 'job_id', ARGV[9])
end
return 1
"""

# --- batches (queue/batch_store.py) ---

# KEYS: lease. ARGV: runner, lease_ms
# Take a batch's lease if free, or extend it if this runner holds it; 1 when held.
BATCH_CLAIM = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if holder then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: line -> job map, open jobs (sorted set), batch hash.
# ARGV: enqueued cursor, then custom_id, job_id, line index triples
# Record enqueued lines once: a line re-submitted after a crash (the same job id, through its
# idempotency key) is neither mapped nor opened again, so it is never counted twice.
BATCH_RECORD = """
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('ZADD', KEYS[2], ARGV[i + 2], ARGV[i + 1])
  end
end
if tonumber(ARGV[1]) > tonumber(redis.call('HGET', KEYS[3], 'enqueued') or '0') then
  redis.call('HSET', KEYS[3], 'enqueued', ARGV[1])
end
"""

# KEYS: open jobs (sorted set), batch hash. ARGV: job_id, counter ('completed' | 'failed') pairs
# Count each finished job once, however many runners see it finish.
BATCH_SETTLE = """
for i = 1, #ARGV, 2 do
  if redis.call('ZREM', KEYS[1], ARGV[i]) == 1 then
    redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
  end
end
"""
