"""The server-side Lua scripts of `RedisJournal` (Redis 6.2: EVALSHA, no FUNCTIONs), one per operation.

Every script works on the five keys of one run (`pixverse-async:{run:NAME}:<key>`, see
`redis_journal.run_keys`), always passed in this order (`KEYS[1..5]`):

- `meta`: a hash: `run_id` (made by the first process, checked by every script: a Redis that lost the run
  says so instead of handing out rows again), `manifest_path` and `manifest_rows` (the manifest's identity).
- `rows`: a hash, row key -> JSON of the row (`line`, `fingerprint`, `state`, `task_id`, `file`, `size`,
  `sha256`, `reason`, `updated_at`), the same fields as a SQLite journal's row.
- `claims`: a hash, row key -> the worker holding it. A row is claimed from when a worker takes it until it
  ends (or is left for a rerun); the run's `--concurrency` bounds the claims of all workers together.
- `leases`: a sorted set, worker -> when its lease ends (Redis server time, ms). A worker renews it while it
  lives; the claims of a worker whose lease ended are swept: a row that was `submitting` becomes `uncertain`
  (its request may have reached the API), a `todo` or `submitted` one goes back to the queue.
- `queue`: a sorted set of the rows to take, by manifest line.

Time is Redis's own (`TIME`), so that workers on machines with different clocks agree on leases.
"""

from __future__ import annotations

_COMMON = """
local meta, rows, claims, leases, queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The claims of workers whose lease ended: `submitting` rows become `uncertain`, others go back to the queue.
-- Returns what was swept, for the caller to check against the dead worker's own log.
local function sweep(now, stamp)
  local swept = {}
  local dead = redis.call('ZRANGEBYSCORE', leases, '-inf', now)
  if #dead == 0 then return swept end
  redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
  local gone = {}
  for _, worker in ipairs(dead) do gone[worker] = true end
  local held = redis.call('HGETALL', claims)
  for i = 1, #held, 2 do
    local key, owner = held[i], held[i + 1]
    if gone[owner] then
      redis.call('HDEL', claims, key)
      local raw = redis.call('HGET', rows, key)
      if raw then
        local row = cjson.decode(raw)
        if row.state == 'submitting' then
          row.state = 'uncertain'
          row.reason = 'its worker (' .. owner .. ') stopped while its submission may have been on the way'
          row.updated_at = stamp
          redis.call('HSET', rows, key, cjson.encode(row))
        elseif row.state == 'todo' or row.state == 'submitted' then
          redis.call('ZADD', queue, row.line, key)
        end
        table.insert(swept, {key, owner, row.state})
      end
    end
  end
  return swept
end

local function same_run(run_id)
  return redis.call('HGET', meta, 'run_id') == run_id
end
"""

# ARGV: run_id candidate, manifest path, manifest rows digest, stamp, JSON [[key, line, fingerprint], ...],
# JSON {key: row fields} (what the workers' logs say of the rows, for a run that Redis does not hold)
# -> JSON {"ok": run_id, "created": bool} or {"other": the manifest path the run belongs to}
# A run that Redis does not hold is made from the manifest and the workers' logs (a Redis that restarted
# empty must not sell a row twice), its rows to do or to poll queued.
JOIN = (
    _COMMON
    + """
local path, digest, stamp = ARGV[2], ARGV[3], ARGV[4]
local known_path = redis.call('HGET', meta, 'manifest_path')
local known_rows = redis.call('HGET', meta, 'manifest_rows')
if known_path and known_path ~= path and known_rows ~= digest then
  return cjson.encode({other = known_path})
end
local created = redis.call('HSETNX', meta, 'run_id', ARGV[1]) == 1
redis.call('HSET', meta, 'manifest_path', path, 'manifest_rows', digest)
local seed = created and cjson.decode(ARGV[6]) or {}
for _, entry in ipairs(cjson.decode(ARGV[5])) do
  local key, line, fingerprint = entry[1], entry[2], entry[3]
  local raw = redis.call('HGET', rows, key)
  if raw then
    local row = cjson.decode(raw)
    if row.line ~= line then
      row.line = line
      redis.call('HSET', rows, key, cjson.encode(row))
    end
  else
    local row = seed[key] or {state = 'todo'}
    row.line = line
    row.fingerprint = row.fingerprint or fingerprint
    row.updated_at = row.updated_at or stamp
    redis.call('HSET', rows, key, cjson.encode(row))
    if created and (row.state == 'todo' or row.state == 'submitted') then
      redis.call('ZADD', queue, line, key)
    end
  end
end
return cjson.encode({ok = redis.call('HGET', meta, 'run_id'), created = created})
"""
)

# ARGV: run_id, stamp -> JSON {"rows": {key: row JSON}, "claims": {key: worker}, "swept": [...]} or {"lost": 1}
SNAPSHOT = (
    _COMMON
    + """
if not same_run(ARGV[1]) then return cjson.encode({lost = 1}) end
local swept = sweep(now_ms(), ARGV[2])
local found, held = {}, {}
local all = redis.call('HGETALL', rows)
for i = 1, #all, 2 do found[all[i]] = all[i + 1] end
local claimed = redis.call('HGETALL', claims)
for i = 1, #claimed, 2 do held[claimed[i]] = claimed[i + 1] end
return cjson.encode({rows = found, claims = held, swept = swept})
"""
)

# ARGV: run_id, worker, lease ms, limit, stamp
# -> JSON {"row": JSON, "key": k, "kind": "submit"|"poll"} | {"full": claimed} | {"empty": claimed by others}
#    | {"lost": 1}, each with "swept".
# Takes the first row of the queue that is still to do (`todo`: marked `submitting` here, before its request
# is built and sent) or to poll (`submitted`), unless the run's claims are at `limit` already.
CLAIM = (
    _COMMON
    + """
if not same_run(ARGV[1]) then return cjson.encode({lost = 1}) end
local worker, lease, limit, stamp = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5]
local now = now_ms()
redis.call('ZADD', leases, now + lease, worker)
local swept = sweep(now, stamp)
local claimed = redis.call('HLEN', claims)
if claimed >= limit then return cjson.encode({full = claimed, swept = swept}) end
while true do
  local first = redis.call('ZPOPMIN', queue)
  if #first == 0 then
    local others = 0
    for _, owner in ipairs(redis.call('HVALS', claims)) do
      if owner ~= worker then others = others + 1 end
    end
    return cjson.encode({empty = others, swept = swept})
  end
  local key = first[1]
  local raw = redis.call('HGET', rows, key)
  if raw and redis.call('HEXISTS', claims, key) == 0 then
    local row = cjson.decode(raw)
    local kind = nil
    if row.state == 'todo' then
      kind = 'submit'
      row.state = 'submitting'
      row.updated_at = stamp
      raw = cjson.encode(row)
      redis.call('HSET', rows, key, raw)
    elseif row.state == 'submitted' then
      kind = 'poll'
    end
    if kind then
      redis.call('HSET', claims, key, worker)
      return cjson.encode({key = key, kind = kind, row = raw, swept = swept})
    end
  end
end
"""
)

# ARGV: run_id, worker, lease ms, stamp, JSON [op, ...] -> JSON {"results": [result, ...]} or {"lost": 1}
# An op: {"key", "state" (or absent: unchanged), "set": {field: value}, "unset": [field], "ends": bool,
# "queue": bool, "claim": bool (hold it again, after Redis lost the run), "expect": state or absent}.
# With "expect" (the decisions a worker makes at start from what it read), the op applies only to an
# unclaimed row still in that state; without it, only to a row this worker holds, or nobody does.
# Results: "ok", "taken" (another worker holds the row), "stale" (it changed since it was read), "missing".
# An empty list of ops renews the lease.
RECORD = (
    _COMMON
    + """
if not same_run(ARGV[1]) then return cjson.encode({lost = 1}) end
local worker, lease, stamp = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local now = now_ms()
redis.call('ZADD', leases, now + lease, worker)
local results = {}
for i, op in ipairs(cjson.decode(ARGV[5])) do
  local key = op.key
  local raw = redis.call('HGET', rows, key)
  local owner = redis.call('HGET', claims, key)
  local result = 'ok'
  if not raw then
    result = 'missing'
  elseif op.expect then
    if owner then result = 'taken'
    elseif cjson.decode(raw).state ~= op.expect then result = 'stale' end
  elseif owner and owner ~= worker then
    result = 'taken'
  end
  if result == 'ok' then
    local row = cjson.decode(raw)
    if op.state then row.state = op.state end
    if op.set then for name, value in pairs(op.set) do row[name] = value end end
    if op.unset then for _, name in ipairs(op.unset) do row[name] = nil end end
    row.updated_at = stamp
    redis.call('HSET', rows, key, cjson.encode(row))
    if op.ends then redis.call('HDEL', claims, key) end
    if op.claim then redis.call('HSET', claims, key, worker) end
    if op.queue then redis.call('ZADD', queue, row.line, key) end
  end
  results[i] = result
end
return cjson.encode({results = results})
"""
)

# ARGV: run_id, worker, stamp -> JSON {"swept": [...]}. A worker that ends gives back what it still holds, as
# if its lease had ended: rows to do or to poll go back to the queue for the others, a row `submitting`
# becomes `uncertain` (the worker then checks its own log: a claim whose answer was lost was never sent).
LEAVE = (
    _COMMON
    + """
local worker, stamp = ARGV[2], ARGV[3]
local swept = {}
if same_run(ARGV[1]) then
  redis.call('ZADD', leases, 0, worker)
  swept = sweep(0, stamp)
end
redis.call('ZREM', leases, worker)
return cjson.encode({swept = swept})
"""
)
