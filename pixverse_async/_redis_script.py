"""The server-side script of `pixverse_async.redis.RedisBudget`: one client's step, atomic in Redis.

Kept apart from the budget's Python so that each reads whole: the script is registered once
(`register_script`, run by EVALSHA: Redis 6.2 and later, no FUNCTIONs) and called once per round trip.
"""

# One step of one client, atomic: its queued reports, its lease, freeing held slots, adopting a dead
# client's tasks, and taking up to `want` slots. Reports are idempotent by slot (a slot another client took
# over, or one Redis no longer knows, is left alone), so a report sent twice or late changes nothing.
STEP = r"""
local K_STATE, K_OWNERS, K_TASKS, K_SINCE, K_LEASES, K_HELD = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local CHANNEL = KEYS[7]
local client, seen_epoch, lease = ARGV[1], ARGV[2], tonumber(ARGV[3])
local maxc, given, want = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local fallback_hold, grace, leaving, restoring = tonumber(ARGV[7]), tonumber(ARGV[8]), ARGV[9] == '1', ARGV[10] == '1'
local evidence, strikes_needed = tonumber(ARGV[11]), tonumber(ARGV[12])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

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
local in_use, running, proven, window = num('in_use'), num('running'), num('proven'), num('window')
local cap, floor, strikes, ends, step = num('cap'), num('floor'), num('strikes'), num('ends'), num('step')
local longest = num('longest')
if given ~= nil and cap == nil and S.given == nil then cap = given; floor = given; S.given = given end
local ceiling = maxc
if given ~= nil and given < ceiling then ceiling = given end
local freed = false

local function learn(r)
  local c = math.max(1, math.min(r, ceiling))
  cap = c; floor = c; strikes = 0; ends = 0; step = 1
end
local function probe()
  if cap == nil or cap >= ceiling then return end
  ends = ends + 1
  if ends < cap then return end
  ends = 0
  local raised = cap + step
  step = step * 2
  if raised >= maxc and given == nil then
    cap = nil; floor = nil
    if window < maxc then window = maxc end
  else
    cap = math.min(raised, ceiling)
  end
end
local function drop(slot)
  redis.call('HDEL', K_OWNERS, slot); redis.call('HDEL', K_TASKS, slot); redis.call('HDEL', K_SINCE, slot)
end

if status == 'ok' then
  for i = 13, #ARGV, 3 do
    local op, slot, arg = ARGV[i], ARGV[i + 1], ARGV[i + 2]
    local owner = redis.call('HGET', K_OWNERS, slot)
    if op == 'S' then
      if not owner then
        redis.call('HSET', K_OWNERS, slot, client); in_use = in_use + 1
        if arg ~= '' then
          redis.call('HSET', K_TASKS, slot, arg); redis.call('HSET', K_SINCE, slot, now); running = running + 1
        end
      end
    elseif owner == client then
      local has_task = redis.call('HEXISTS', K_TASKS, slot) == 1
      if op == 'A' or op == 'D' then
        if not has_task then
          redis.call('HSET', K_TASKS, slot, arg); redis.call('HSET', K_SINCE, slot, now)
          running = running + 1; window = window + 1
          if op == 'A' then
            if running > proven then proven = running end
            if floor ~= nil and running > floor then
              floor = running
              if cap ~= nil and running > cap then cap = running end
            end
            strikes = 0
          end
        end
      elseif op == 'R' then
        drop(slot); in_use = in_use - 1; freed = true
        local retry_after = tonumber(arg)
        if has_task then running = running - 1 end
        if retry_after == nil or retry_after > 0 then
          if floor ~= nil and running >= floor then
            learn(running)
          elseif running >= 1 and running >= evidence * proven then
            strikes = strikes + 1
            if strikes >= strikes_needed then learn(running) end
          end
        end
      elseif op == 'F' then
        drop(slot); in_use = in_use - 1; freed = true
        if has_task then
          running = running - 1
          local took = tonumber(arg)
          if took ~= nil then
            if longest == nil or took > longest then longest = took end
            probe()
          end
        end
      elseif op == 'H' then
        local start = tonumber(redis.call('HGET', K_SINCE, slot)) or now
        if not has_task then running = running + 1; window = window + 1 end
        redis.call('HSET', K_OWNERS, slot, '~'); redis.call('HDEL', K_TASKS, slot)
        redis.call('ZADD', K_HELD, start, slot)
      end
    end
    if op == 'P' then
      local until_ = now + tonumber(arg)
      if (num('pause_' .. slot) or 0) < until_ then S['pause_' .. slot] = until_ end
      S['pauses_' .. slot] = (num('pauses_' .. slot) or 0) + 1
    end
  end
end

-- Held slots whose task could have ended by now are free.
local hold = longest or fallback_hold
local due = redis.call('ZRANGEBYSCORE', K_HELD, '-inf', now - hold)
for _, slot in ipairs(due) do
  redis.call('ZREM', K_HELD, slot); drop(slot); in_use = in_use - 1; running = running - 1; freed = true
end

-- Leases: a lapsed one's tasks are adopted by this client; its unanswered submissions are held.
local adopted = {}
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
            adopted[#adopted + 1] = slot; adopted[#adopted + 1] = task
          else
            running = running + 1; window = window + 1
            redis.call('HSET', K_OWNERS, slot, '~'); redis.call('ZADD', K_HELD, now, slot)
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

local limit
if cap ~= nil then limit = math.max(1, math.min(ceiling, cap)) else limit = math.min(ceiling, window) end
local granted = {}
if status == 'ok' and now >= tonumber(S.recover_until) then
  local seq = tonumber(S.seq)
  for _ = 1, want do
    if in_use >= limit then break end
    seq = seq + 1
    local slot = client .. '#' .. seq
    redis.call('HSET', K_OWNERS, slot, client); in_use = in_use + 1
    granted[#granted + 1] = slot
  end
  S.seq = seq
end
if freed and in_use < limit then redis.call('PUBLISH', CHANNEL, 'free') end

S.in_use = in_use; S.running = running; S.proven = proven; S.window = window; S.strikes = strikes
S.ends = ends; S.step = step; S.cap = cap or ''; S.floor = floor or ''; S.longest = longest or ''
local flat = {}
for k, v in pairs(S) do flat[#flat + 1] = k; flat[#flat + 1] = tostring(v) end
redis.call('HSET', K_STATE, unpack(flat))

-- When this client should look again by itself: a held slot's end, or another client's lease lapsing.
local next_event = ''
local first_held = redis.call('ZRANGE', K_HELD, 0, 0, 'WITHSCORES')
if #first_held > 0 then next_event = tonumber(first_held[2]) + hold - now end
local leases = redis.call('ZRANGEBYSCORE', K_LEASES, now, '+inf', 'WITHSCORES', 'LIMIT', 0, 2)
for i = 1, #leases, 2 do
  if leases[i] ~= client then
    local at = tonumber(leases[i + 1]) - now
    if next_event == '' or at < next_event then next_event = at end
    break
  end
end
local recover = tonumber(S.recover_until) - now
if recover > 0 and (next_event == '' or recover < next_event) then next_event = recover end
if lapsed_self then status = 'lapsed' end
return {status, S.epoch, granted, adopted, {
  tostring(in_use), tostring(running), tostring(proven), tostring(cap or ''), tostring(floor or ''),
  tostring(limit), tostring(next_event),
  tostring((num('pause_submit') or 0) - now), tostring(num('pauses_submit') or 0),
  tostring((num('pause_task-result') or 0) - now), tostring(num('pauses_task-result') or 0)}}
"""
