"""The server-side script of `pixverse_async.redis.RedisBudget`: one client's step, atomic in Redis.

Kept apart from the budget's Python so that each reads whole: the script is registered once
(`register_script`, run by EVALSHA: Redis 6.2 and later, no FUNCTIONs) and called once per round trip.

The step takes one argument, a JSON object of named inputs (`STEP_INPUTS`), and answers one JSON object
(`STEP_REPLY`): both sides read them by name. Its cap state is the port of `_cap_state.CapState`: one Lua
function per operation, under the same name, with the same rules (`tests/test_cap_state.py` keeps them in
step); around each, the slot's bookkeeping (who owns it, its task, since when) in Redis hashes.
"""

#: The step's inputs (`ARGV[1]`, JSON): name -> what it is. `given_cap` and `now` may be left out.
STEP_INPUTS = {
    "client": "this client's id (its lease, the owner of its slots)",
    "epoch": "the state's epoch this client last heard ('' before its first step): a new one means Redis lost it",
    "lease": "seconds this client's lease lasts from now",
    "max_concurrency": "the most slots this client lets out",
    "given_cap": "RateLimits.max_running, if given",
    "want": "slots to take now",
    "fallback_hold": "how long a held slot stays taken while no task has ended (LOST_ANSWER_HOLD)",
    "grace": "after Redis lost its state: seconds in which live clients restore their slots before any is taken",
    "leaving": "true: this client closes (hands its tasks over, takes nothing)",
    "restoring": "true: the ops restore this client's slots after Redis lost its state",
    "cap_evidence": "CAP_EVIDENCE",
    "cap_strikes": "CAP_STRIKES",
    "now": "the time to use instead of Redis's TIME (tests: the same sequence in both languages)",
    "ops": "this client's reports, in order: objects {op, slot, ...}, see STEP_OPS",
}
#: The reports a step applies: op -> its other fields, and the `CapState` operation it is.
STEP_OPS = {
    "accepted": "task: the task id (CapState.accepted)",
    "adopted": "task: the task id (CapState.adopted)",
    "refused": "retry_after: seconds or null (CapState.refused)",
    "released": "took: seconds since acceptance, or null (CapState.released)",
    "abandoned": "(CapState.abandoned, from the slot's acceptance, or now)",
    "restored": "task: the task id or '' (CapState.restored)",
    "paused": "endpoint, no slot; seconds: its pause on evidence of a rate limit (not the cap state's)",
}
#: The step's reply (JSON): name -> what it is. `cap`, `floor` and `next_event` are left out when unknown.
STEP_REPLY = {
    "status": "'ok', 'restore' (Redis lost the state: restore the slots), or 'lapsed' (this client's lease had)",
    "epoch": "the state's epoch",
    "granted": "the slots taken for this client (a list; an empty one may come as {})",
    "adopted": "slot -> task id: running tasks of dead clients, now this client's",
    "in_use": "CapState.in_use",
    "running": "CapState.running",
    "proven": "CapState.proven",
    "cap": "CapState.cap",
    "floor": "CapState.floor",
    "limit": "CapState.limit, for this client",
    "next_event": "seconds until this client should step by itself (a held slot freed, a lease lapsing)",
    "pauses": "endpoint -> {left: seconds of its pause left, count: pauses so far}",
}

# One step of one client, atomic: its queued reports, its lease, freeing held slots, adopting a dead
# client's tasks, and taking up to `want` slots. Reports are idempotent by slot (a slot another client took
# over, or one Redis no longer knows, is left alone), so a report sent twice or late changes nothing.
STEP = r"""
local K_STATE, K_OWNERS, K_TASKS, K_SINCE, K_LEASES, K_HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local CHANNEL = KEYS[7]
local I = cjson.decode(ARGV[1])
local client, seen_epoch, lease = I.client, I.epoch, I.lease
local maxc, want, fallback_hold, grace = I.max_concurrency, I.want, I.fallback_hold, I.grace
local leaving, restoring = I.leaving, I.restoring
local given = I.given_cap
local t = redis.call('TIME')
local now = I.now or (tonumber(t[1]) + tonumber(t[2]) / 1000000)

local S = {}
local raw = redis.call('HGETALL', K_STATE)
for i = 1, #raw, 2 do S[raw[i]] = raw[i + 1] end
local status = 'ok'
if S.epoch == nil then
  S = {epoch = t[1] .. '.' .. t[2], in_use = 0, running = 0, proven = 0, window = 1, strikes = 0, ends = 0,
       step = 1, seq = 0, recover_until = 0}
  if seen_epoch ~= '' then S.recover_until = now + grace end
end
if seen_epoch ~= '' and seen_epoch ~= S.epoch then
  status = 'restore'
end
local function num(k) local v = S[k]; if v == nil or v == '' then return nil end; return tonumber(v) end

-- The cap state: `CapState` of `_cap_state.py`, its fields and operations under the same names.
local C = {in_use = num('in_use'), running = num('running'), proven = num('proven'), window = num('window'),
           cap = num('cap'), floor = num('floor'), strikes = num('strikes'), ends = num('ends'),
           step = num('step'), longest = num('longest')}
if given ~= nil and C.cap == nil and S.given == nil then C.cap = given; C.floor = given; S.given = given end
local ceiling = maxc
if given ~= nil and given < ceiling then ceiling = given end

local function limit()
  if C.cap ~= nil then return math.max(1, math.min(ceiling, C.cap)) end
  return math.min(ceiling, C.window)
end
local function hold() return C.longest or fallback_hold end
local function looks_like_cap(running, proven, floor)
  return (floor ~= nil and running >= floor) or (running >= 1 and running >= I.cap_evidence * proven)
end
local function learn(running)
  C.cap = math.max(1, math.min(running, ceiling)); C.floor = C.cap
  C.strikes = 0; C.ends = 0; C.step = 1
end
local function probe()
  local cap = C.cap
  if cap == nil or cap >= ceiling then return end
  C.ends = C.ends + 1
  if C.ends < cap then return end
  C.ends = 0
  local raised = cap + C.step
  C.step = C.step * 2
  if raised >= maxc and given == nil then
    C.cap = nil; C.floor = nil
    if C.window < maxc then C.window = maxc end
  else
    C.cap = math.min(raised, ceiling)
  end
end
local function take()
  if C.in_use < limit() then C.in_use = C.in_use + 1; return true end
  return false
end
local function accepted()
  C.running = C.running + 1
  local running = C.running
  if running > C.proven then C.proven = running end
  C.window = C.window + 1
  if C.floor ~= nil and running > C.floor then
    C.floor = running
    if C.cap ~= nil and running > C.cap then C.cap = running end
  end
  C.strikes = 0
end
local function adopted()
  C.running = C.running + 1; C.window = C.window + 1
end
local function refused(retry_after)
  C.in_use = C.in_use - 1
  if retry_after ~= nil and retry_after <= 0 then return 'transient' end
  local running = C.running
  if C.floor ~= nil and running >= C.floor then learn(running); return 'cap' end
  if looks_like_cap(running, C.proven, nil) then
    C.strikes = C.strikes + 1
    if C.strikes >= I.cap_strikes then learn(running) end
    return 'cap'
  end
  return 'rate'
end
local function released(running, took)
  C.in_use = C.in_use - 1
  if running then
    C.running = C.running - 1
    if took ~= nil then
      if C.longest == nil or took > C.longest then C.longest = took end
      probe()
    end
  end
end
local function abandoned(slot, started_at, running)
  if not running then C.running = C.running + 1; C.window = C.window + 1 end
  redis.call('ZADD', K_HELD, started_at, slot)
end
local function restored(running)
  C.in_use = C.in_use + 1
  if running then C.running = C.running + 1 end
end

-- The slots' bookkeeping around the operations.
local freed = false
local function drop(slot)
  redis.call('HDEL', K_OWNERS, slot); redis.call('HDEL', K_TASKS, slot); redis.call('HDEL', K_SINCE, slot)
end
local function free_due(at)
  local due = redis.call('ZRANGEBYSCORE', K_HELD, '-inf', at - hold())
  for _, slot in ipairs(due) do redis.call('ZREM', K_HELD, slot); drop(slot) end
  C.in_use = C.in_use - #due; C.running = C.running - #due
  return #due
end
local function optional(v) if v == cjson.null then return nil end; return v end

if status == 'ok' then
  for _, report in ipairs(I.ops) do
    local op, slot = report.op, report.slot
    local owner = slot and redis.call('HGET', K_OWNERS, slot)
    if op == 'restored' then
      if not owner then
        redis.call('HSET', K_OWNERS, slot, client)
        if report.task ~= '' then
          redis.call('HSET', K_TASKS, slot, report.task); redis.call('HSET', K_SINCE, slot, now)
        end
        restored(report.task ~= '')
      end
    elseif op == 'paused' then
      local endpoint, until_ = report.endpoint, now + report.seconds
      if (num('pause_' .. endpoint) or 0) < until_ then S['pause_' .. endpoint] = until_ end
      S['pauses_' .. endpoint] = (num('pauses_' .. endpoint) or 0) + 1
    elseif owner == client then
      local has_task = redis.call('HEXISTS', K_TASKS, slot) == 1
      if op == 'accepted' or op == 'adopted' then
        if not has_task then
          redis.call('HSET', K_TASKS, slot, report.task); redis.call('HSET', K_SINCE, slot, now)
          if op == 'accepted' then accepted() else adopted() end
        end
      elseif op == 'refused' then
        drop(slot); freed = true
        refused(optional(report.retry_after))
      elseif op == 'released' then
        drop(slot); freed = true
        released(has_task, optional(report.took))
      elseif op == 'abandoned' then
        local start = tonumber(redis.call('HGET', K_SINCE, slot)) or now
        redis.call('HSET', K_OWNERS, slot, '~'); redis.call('HDEL', K_TASKS, slot)
        abandoned(slot, start, has_task)
      end
    end
  end
end

-- Held slots whose task could have ended by now are free.
if free_due(now) > 0 then freed = true end

-- Leases: a lapsed one's tasks are adopted by this client; its unanswered submissions are held.
local adopted_tasks = {}
local lapsed_self = false
if status == 'ok' then
  if seen_epoch ~= '' and not restoring and not redis.call('ZSCORE', K_LEASES, client) then
    lapsed_self = true
  end
  if not leaving then
    local dead = redis.call('ZRANGEBYSCORE', K_LEASES, '-inf', now)
    if #dead > 0 then
      local owners = redis.call('HGETALL', K_OWNERS)
      local is_dead = {}
      for _, c in ipairs(dead) do if c ~= client then is_dead[c] = true end end
      for i = 1, #owners, 2 do
        local slot, owner = owners[i], owners[i + 1]
        if is_dead[owner] then
          local task = redis.call('HGET', K_TASKS, slot)
          if task then
            redis.call('HSET', K_OWNERS, slot, client)
            adopted_tasks[slot] = task
          else
            redis.call('HSET', K_OWNERS, slot, '~')
            abandoned(slot, now, false)
          end
        end
      end
      for c, _ in pairs(is_dead) do redis.call('ZREM', K_LEASES, c) end
    end
  end
  if leaving then
    local owns = false
    local owners = redis.call('HVALS', K_OWNERS)
    for _, owner in ipairs(owners) do if owner == client then owns = true; break end end
    if owns then
      redis.call('ZADD', K_LEASES, 0, client); redis.call('PUBLISH', CHANNEL, 'lapse')
    else
      redis.call('ZREM', K_LEASES, client)
    end
  else
    redis.call('ZADD', K_LEASES, now + lease, client)
  end
end

local granted = {}
if status == 'ok' and now >= tonumber(S.recover_until) then
  local seq = tonumber(S.seq)
  for _ = 1, want do
    if not take() then break end
    seq = seq + 1
    local slot = client .. '#' .. S.epoch .. '#' .. seq  -- the epoch: names restored slots keep are not given again
    redis.call('HSET', K_OWNERS, slot, client)
    granted[#granted + 1] = slot
  end
  S.seq = seq
end
if freed and C.in_use < limit() then redis.call('PUBLISH', CHANNEL, 'free') end

for _, k in ipairs({'in_use', 'running', 'proven', 'window', 'strikes', 'ends', 'step', 'cap', 'floor', 'longest'}) do
  S[k] = C[k] or ''
end
local flat = {}
for k, v in pairs(S) do flat[#flat + 1] = k; flat[#flat + 1] = tostring(v) end
redis.call('HSET', K_STATE, unpack(flat))

-- When this client should look again by itself: a held slot's end, or another client's lease lapsing.
local next_event = nil
local first_held = redis.call('ZRANGE', K_HELD, 0, 0, 'WITHSCORES')
if #first_held > 0 then next_event = tonumber(first_held[2]) + hold() - now end
local leases = redis.call('ZRANGEBYSCORE', K_LEASES, now, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
for i = 1, #leases, 2 do
  if leases[i] ~= client then
    local at = tonumber(leases[i + 1]) - now
    if next_event == nil or at < next_event then next_event = at end
    break
  end
end
local recover = tonumber(S.recover_until) - now
if recover > 0 and (next_event == nil or recover < next_event) then next_event = recover end
if lapsed_self then status = 'lapsed' end
local pauses = {}
for _, endpoint in ipairs({'submit', 'task-result'}) do
  pauses[endpoint] = {left = (num('pause_' .. endpoint) or 0) - now, count = num('pauses_' .. endpoint) or 0}
end
return cjson.encode({status = status, epoch = S.epoch, granted = granted, adopted = adopted_tasks,
  in_use = C.in_use, running = C.running, proven = C.proven, cap = C.cap, floor = C.floor, limit = limit(),
  next_event = next_event, pauses = pauses})
"""
