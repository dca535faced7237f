"""Lua scripts of the Redis task queue: each atomic change of the queue is one script.

Every script receives ``ARGV[1]`` = key prefix, ``ARGV[2]`` = the queue's default
``max_attempts``, ``ARGV[3]`` = ``result_ttl`` in milliseconds; its own arguments
follow. Keys are built inside the scripts from the prefix (task ids are only known
there, e.g. after ``ZPOPMIN``), so the scripts assume a single Redis node, not Redis
Cluster. Times come from the server's ``TIME`` (milliseconds): see ``task_queue``.

Settling scripts (``ack``, ``nack``, ``release``) take an operation id, chosen afresh by
each Python call, and record ``settled = <op id>|<outcome>`` in the task hash: when the
client repeats a call whose reply was lost on a broken connection, the repeat sees its
own op id and returns the first outcome instead of a false ``LeaseLostError``, while a
second, separate call on the same delivery is still refused.

Each script defines only the helpers (``_HELPERS``) it uses, directly or through others:
``lua_library`` resolves them by name when this module is imported (a helper defined costs
the server on every call). A script's text, and so its SHA-1, is the same in every process.
"""

from __future__ import annotations

from distributed_agents.adapters.redis.lua_library import LuaLibrary, names_in

__all__ = [
    "ACK",
    "BAD_PAYLOAD",
    "CANCEL",
    "CLAIM",
    "DEAD_LETTERS",
    "ENQUEUE",
    "ENQUEUE_BODY",
    "EXTEND",
    "NACK",
    "PURGE",
    "RELEASE",
    "REQUEUE",
    "RESULTS",
    "SERVER_CLOCK",
    "STATS",
    "UNPARK",
]

# The server's time, read at most once per script: a script runs alone on the server, so one
# reading serves all of it (each TIME is a command, ~10k server instructions). Heads every
# script of the adapter that reads the time; a script made of others (the state store's create
# and enqueue) holds it once, ahead of them, so they share the reading.
SERVER_CLOCK = r"""
local NOW_MS = nil
local function now_ms()
  if NOW_MS == nil then
    local t = redis.call('TIME')
    NOW_MS = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  end
  return NOW_MS
end
"""

# Shared helpers of the queue's scripts (Redis scripts cannot call each other): each script
# defines only those it uses (see lua_library for the layout this text keeps).
_HELPERS = r"""
local P = ARGV[1]
local DEFAULT_MAX = tonumber(ARGV[2])
local RESULT_TTL = tonumber(ARGV[3])
local WOKEN = {}

local function k_task(id) return P .. ':q:t:' .. id end
local function k_errors(id) return P .. ':q:e:' .. id end
local function k_result(id) return P .. ':q:r:' .. id end
local function k_ready(t) return P .. ':q:ready:' .. t end
local function k_delayed(t) return P .. ':q:delayed:' .. t end
local function k_leased(t) return P .. ':q:leased:' .. t end
local function k_dead(t) return P .. ':q:dead:' .. t end

-- A task's stored result, false if none, or "\0" .. the key's type when something other
-- than a string sits there (written below the engine): reported by the caller, naming
-- the key, instead of a WRONGTYPE error failing every task the script reads.
local function result_of(id)
  local r = redis.pcall('GET', k_result(id))
  if type(r) == 'table' and r.err then return '\0' .. redis.call('TYPE', k_result(id)).ok end
  return r
end


-- Wake-up tokens: claimers with nothing to do block on {p}:q:wake:{t} (BLPOP), so each
-- token wakes one idle claimer, not all of them. One token per newly claimable task, at
-- most WAKE_CAP waiting: a woken claimer takes up to its free capacity, and the claim
-- that empties a ready set deletes the tokens left (they would only wake claimers for
-- nothing).
local WAKE_CAP = 64
local function wake(t)
  local key = P .. ':q:wake:' .. t
  local n = WOKEN[t]
  if n == nil then
    n = redis.call('LLEN', key)
  end
  if n < WAKE_CAP then
    redis.call('RPUSH', key, '1')
    n = n + 1
  end
  WOKEN[t] = n
end

-- Parked claimers: a claimer with nothing to claim registers ({p}:q:park:{c}: worker,
-- lease ms, max tasks, until (ms), node types) on {p}:q:idle:{t} of each of its types,
-- then blocks on its own list {p}:q:h:{c} (and the wake-up tokens). An enqueue hands
-- new tasks to the first live registration of their type, leased to that claimer, as one
-- message on its list: its blocked BLPOP returns them, no claim round trip needed.
local PARK_MARGIN = 50  -- ms: a registration about to run out gets nothing handed to it
local function k_park(c) return P .. ':q:park:' .. c end
local function k_handoff(c) return P .. ':q:h:' .. c end
local function k_idle(t) return P .. ':q:idle:' .. t end

-- Length-prefixed fields ("3:abc1:x"), so any bytes (ids, payloads) survive the trip.
local function frame(parts)
  local s = {}
  for _, v in ipairs(parts) do
    v = tostring(v)
    s[#s + 1] = #v .. ':' .. v
  end
  return table.concat(s)
end

local function unframe(s)
  local parts, i = {}, 1
  while i <= #s do
    local c = string.find(s, ':', i, true)
    local len = tonumber(string.sub(s, i, c - 1))
    parts[#parts + 1] = string.sub(s, c + 1, c + len)
    i = c + 1 + len
  end
  return parts
end

-- A number read from a task hash; nil if none (NaN included: Redis refuses it as a score).
local function number_of(v)
  local n = tonumber(v)
  if n ~= n then return nil end
  return n
end

-- A task's max attempts; nil when its 'max' field is no number (written by hand).
local function limit_of(h)
  local m = redis.call('HGET', h, 'max')
  if m and m ~= '' then return number_of(m) end
  return DEFAULT_MAX
end

-- An attempt count read from a task hash; nil unless a whole number (a hand-written
-- '1e999' or 'nan' would fail the JSON of a dead letter's result).
local function count_of(v)
  local n = tonumber(v)
  if n == nil or n ~= n or n == math.huge or n == -math.huge or n ~= math.floor(n) then return nil end
  return n
end

-- Hand-edited task hashes: the reason a field makes a task malformed, naming its key and
-- field, for its dead letter (the task is not run; its bytes are kept).
-- Bytes other than printable ASCII are written \xNN: the reason goes into a result's JSON.
local function shown(v)
  if v == nil or v == false then return 'missing' end
  local text = string.gsub(string.sub(tostring(v), 1, 40), '[^\32-\126]',
                           function(c) return string.format('\\x%02x', string.byte(c)) end)
  return "'" .. text .. "'"
end
local function malformed(h, field, value, wanted)
  return "malformed task: field '" .. field .. "' of its hash " .. h .. ' is ' .. shown(value) .. ', not ' ..
         wanted .. '; it was written by something other than the queue, so it is not run (fix the task and ' ..
         'enqueue it again)'
end
local dead_letter  -- below; push_ready dead-letters a task whose hash cannot be queued

-- Tasks whose bytes are longer than RAW_MAX (> 0) are never delivered: take() dead-letters
-- them where they are (the bytes do not leave the server), keeping their first RAW_KEPT bytes
-- (core.limits.DEAD_RAW_KEPT), with OVERSIZED as the reason ('{size}' replaced). CLAIM and
-- ENQUEUE set them from their arguments; other scripts take nothing.
local RAW_MAX, OVERSIZED = 0, ''
local RAW_KEPT = 65536

local function new_member(id)
  return string.format('%016d', redis.call('INCR', P .. ':q:seq')) .. id
end

local function push_ready(id, t)
  local h = k_task(id)
  local f = redis.call('HMGET', h, 'score', 'member')
  local score = number_of(f[1])
  if not score or not f[2] or string.sub(f[2], 17) ~= id then
    -- Edited by hand while delayed or leased: ZADD would fail the script, or queue a member naming no task.
    local field, value, wanted = 'score', f[1], 'a number (its priority)'
    if score then field, value, wanted = 'member', f[2], 'its place in the queue (16 digits, then its id)' end
    redis.call('HSET', h, 'type', t)  -- listed under its queue, where requeue and purge find it
    dead_letter(id, t, malformed(h, field, value, wanted), count_of(redis.call('HGET', h, 'attempt')) or 0,
                now_ms(), '1')
    return
  end
  redis.call('HSET', h, 'state', 'queued')
  redis.call('ZADD', k_ready(t), score, f[2])  -- the number, not the text: Redis reads fewer spellings
  wake(t)
end

-- The "done" event carries the result itself ("id\nresult JSON") when it is small, so a
-- waiting orchestrator needs no read after the wake-up; a large one carries the id only.
local INLINE_RESULT_MAX = 65536
local function store_result(id, json)
  redis.call('SET', k_result(id), json, 'PX', RESULT_TTL)
  if #json <= INLINE_RESULT_MAX then
    redis.call('PUBLISH', P .. ':q:ev:done', id .. '\n' .. json)
  else
    redis.call('PUBLISH', P .. ':q:ev:done', id)
  end
end

dead_letter = function(id, t, reason, attempts, now, bad)
  local h = k_task(id)
  local seq = redis.call('INCR', P .. ':q:deadseq')
  redis.call('HSET', h, 'state', 'dead', 'reason', reason, 'dead_at', now, 'lease', '',
             'attempt', attempts, 'bad', bad)
  redis.call('HDEL', h, 'deadline', 'worker')
  redis.call('ZADD', k_dead(t), seq, id)
  redis.call('ZADD', P .. ':q:dead', seq, id)
  store_result(id, cjson.encode({task_id = id, status = 'failed', output = cjson.null, error = reason,
                                 attempts = attempts, worker_id = '', finished_at = now / 1000}))
end

-- Apply time to one node type: release due delayed tasks, expire overdue leases. Returns how
-- many tasks it moved (0: no task hash was touched).
local function tick(t, now)
  local dkey = k_delayed(t)
  local due = redis.call('ZRANGEBYSCORE', dkey, '-inf', now, 'LIMIT', 0, 500)
  for _, id in ipairs(due) do
    redis.call('ZREM', dkey, id)
    push_ready(id, t)
  end
  local lkey = k_leased(t)
  local expired = redis.call('ZRANGEBYSCORE', lkey, '-inf', now, 'LIMIT', 0, 500)
  for _, id in ipairs(expired) do
    redis.call('ZREM', lkey, id)
    local h = k_task(id)
    local f = redis.call('HMGET', h, 'attempt', 'worker')
    local attempt = count_of(f[1]) or 0  -- a count written by hand must not fail every claim of the type
    redis.call('RPUSH', k_errors(id), 'attempt ' .. attempt .. ": lease expired (worker '" .. (f[2] or '') .. "')")
    redis.call('HSET', h, 'lease', '')
    local limit = limit_of(h)
    if limit == nil then
      dead_letter(id, t, malformed(h, 'max', redis.call('HGET', h, 'max'), 'a number of attempts'), attempt, now, '1')
    elseif attempt >= limit then
      -- core.ports.task_queue.lease_expired_reason's words
      dead_letter(id, t, 'lease expired on attempt ' .. attempt .. ' of ' .. limit .. ": worker '" .. (f[2] or '') ..
        "' held it and stopped renewing it (it died, hung, lost the backend, or its event loop was blocked by " ..
        "an async def node making a blocking call: the worker's log says which); each attempt a worker does not " ..
        'finish counts toward max_attempts', attempt, now, '0')
    else
      push_ready(id, t)
    end
  end
  return #due + #expired
end

-- Why the hash of task id, popped from the ready set of type t as member, cannot be
-- delivered (nil: it can). A key that is no hash (written over by hand) is moved aside to
-- {p}:q:foreign:{id} first, and a task hash made for its dead letter (a string's bytes
-- kept as its raw bytes), so the claim, and every later one, goes on.
local function hash_problem(h, t, member)
  local kind = redis.call('TYPE', h)['ok']
  if kind == 'none' then
    redis.call('HSET', h, 'type', t, 'member', member)
    return 'malformed task: its hash ' .. h .. ' is missing (deleted by something other than the queue) while ' ..
           'the queue ' .. k_ready(t) .. ' still listed it, so there is nothing to run'
  end
  if kind ~= 'hash' then
    local raw = kind == 'string' and redis.call('GET', h) or nil
    local aside = P .. ':q:foreign:' .. string.sub(member, 17)
    redis.call('RENAME', h, aside)
    redis.call('HSET', h, 'type', t, 'member', member)
    if raw then redis.call('HSET', h, 'raw', raw) end
    return 'malformed task: its key ' .. h .. ' held a ' .. kind .. ', not the queue\'s task hash (written over by ' ..
           'something other than the queue), so it is not run; the ' .. kind .. ' was moved to ' .. aside
  end
  local f = redis.call('HMGET', h, 'type', 'score', 'max', 'raw', 'member')
  local problem = nil
  if f[1] ~= t then
    problem = malformed(h, 'type', f[1], "'" .. t .. "', the node type of the queue it sits in")
  elseif not number_of(f[2]) then
    problem = malformed(h, 'score', f[2], 'a number (its priority)')
  elseif f[3] and f[3] ~= '' and not number_of(f[3]) then
    problem = malformed(h, 'max', f[3], 'a number of attempts')
  elseif not f[4] then
    problem = malformed(h, 'raw', f[4], "the task's bytes")
  elseif f[5] ~= member then
    problem = malformed(h, 'member', f[5], shown(member) .. ', its place in the queue')
  else
    return nil
  end
  -- Listed under the queue it sat in (requeue and purge find it there); the reason keeps the bad value.
  redis.call('HSET', h, 'type', t)
  return problem
end

-- Task id (hash h, node type t, bytes raw, attempt counted) leased to worker under lease id
-- lease until deadline (ms): its hash says so (fields: more field/value pairs written in the
-- same command, or nil) and the leased set of its type holds it; appends id, raw, attempt,
-- lease id, deadline, node type to out (what a claim returns and a hand-over frames).
local function lease_task(h, id, t, raw, attempt, lease, deadline, worker, out, fields)
  local set = fields or {}
  for _, v in ipairs({'state', 'claimed', 'lease', lease, 'deadline', deadline, 'worker', worker}) do
    set[#set + 1] = v
  end
  redis.call('HSET', h, unpack(set))
  redis.call('ZADD', k_leased(t), deadline, id)
  out[#out + 1] = id
  out[#out + 1] = raw
  out[#out + 1] = attempt
  out[#out + 1] = lease
  out[#out + 1] = deadline
  out[#out + 1] = t  -- the queue it sat in: a task naming another node type is not run (task_queue)
end

-- Lease up to want ready tasks of types (highest priority first, then FIFO across the
-- types) to worker: lease ids base:1, base:2, ...; appends id, raw, attempt, lease id,
-- deadline ms, node type per task to out. Returns how many. A task whose hash is
-- malformed (hash_problem) or whose attempt count is no integer is dead-lettered instead.
local function take(types, want, worker, base, lease_ms, now, out)
  local n = 0
  local function deliver(member, t)
    local id = string.sub(member, 17)
    if id == '' then  -- a member added to the ready set by hand names no task: nothing to run or keep
      redis.log(redis.LOG_WARNING, 'queue ' .. k_ready(t) .. ' held member ' .. shown(member) ..
                ', which names no task; dropped')
      return
    end
    local h = k_task(id)
    local problem = hash_problem(h, t, member)
    if problem then
      dead_letter(id, t, problem, count_of(redis.call('HGET', h, 'attempt')) or 0, now, '1')
      return
    end
    if RAW_MAX > 0 then
      local size = redis.call('HSTRLEN', h, 'raw')
      if size > RAW_MAX then
        redis.call('HSET', h, 'raw', string.sub(redis.call('HGET', h, 'raw'), 1, RAW_KEPT))
        local reason = string.gsub(OVERSIZED, '{size}', tostring(size), 1)
        dead_letter(id, t, reason, count_of(redis.call('HGET', h, 'attempt')) or 0, now, '1')
        return
      end
    end
    local attempt = redis.pcall('HINCRBY', h, 'attempt', 1)
    if type(attempt) == 'table' then  -- not an integer (written by hand): one bad task must not fail the claim
      dead_letter(id, t, 'malformed task: its attempt count at ' .. h .. ' is not an integer (' ..
                  shown(redis.call('HGET', h, 'attempt')) .. '), so it is not run', 0, now, '0')
      return
    end
    n = n + 1
    lease_task(h, id, t, redis.call('HGET', h, 'raw') or '', attempt, base .. ':' .. n, now + lease_ms, worker, out)
  end
  if want <= 0 then return 0 end
  if #types == 1 then
    local popped = redis.call('ZPOPMIN', k_ready(types[1]), want)
    for i = 1, #popped, 2 do deliver(popped[i], types[1]) end
  else
    while n < want do
      local best_t, best_m, best_s = nil, nil, nil
      for _, t in ipairs(types) do
        local head = redis.call('ZRANGE', k_ready(t), 0, 0, 'WITHSCORES')
        if head[1] then
          local s = tonumber(head[2])
          if best_t == nil or s < best_s or (s == best_s and head[1] < best_m) then
            best_t, best_m, best_s = t, head[1], s
          end
        end
      end
      if best_t == nil then break end
      redis.call('ZREM', k_ready(best_t), best_m)
      deliver(best_m, best_t)
    end
  end
  return n
end

-- Take back the attempt counted for a delivery that did not run. False (and the task
-- dead-lettered) when its 'attempt' field is no integer (edited by hand while leased).
local function uncount(id, t)
  local h = k_task(id)
  local attempt = redis.pcall('HINCRBY', h, 'attempt', -1)
  if type(attempt) ~= 'table' then return true end
  dead_letter(id, t, malformed(h, 'attempt', redis.call('HGET', h, 'attempt'), 'an attempt count'),
              0, now_ms(), '1')
  return false
end

-- A task handed to a parked claimer under lease L goes back to its place in the queue,
-- the attempt not counted, if L still holds it. Returns 1 if it did.
local function give_back(id, lease)
  local h = k_task(id)
  local f = redis.call('HMGET', h, 'state', 'lease', 'type')
  if f[1] ~= 'claimed' or f[2] ~= lease then return 0 end
  redis.call('ZREM', k_leased(f[3]), id)
  redis.call('HSET', h, 'lease', '')
  redis.call('HDEL', h, 'deadline', 'worker')
  if not uncount(id, f[3]) then return 0 end
  push_ready(id, f[3])
  return 1
end

-- After applying time: 'held' if lease L holds task id; a repeated call sees 'settled'.
-- Time is applied to the task's type only once its own deadline has passed: before that
-- it would move other tasks, never this one (claims, enqueues and result waits apply it
-- for them). The hash is read before, and again only when that moved a task. The third
-- value is the task's attempt count as its hash holds it (text, or nil).
local function check_held(id, lease, op, now)
  local h = k_task(id)
  local f = redis.call('HMGET', h, 'type', 'state', 'lease', 'settled', 'deadline', 'attempt')
  local t = f[1]
  if not t then return 'lost', nil end
  local deadline = number_of(f[5])
  if (not deadline or deadline <= now) and tick(t, now) > 0 then
    f = redis.call('HMGET', h, 'type', 'state', 'lease', 'settled', 'deadline', 'attempt')
  end
  if f[2] == 'claimed' and f[3] == lease then return 'held', t, f[6] end
  if f[4] and string.sub(f[4], 1, #op + 1) == op .. '|' then return 'settled', string.sub(f[4], #op + 2) end
  return 'lost', nil
end
"""
_LIBRARY = LuaLibrary(_HELPERS)


def _script(body: str) -> str:
    """A queue script: ``body`` headed by the helpers it uses (and the clock if they or it read the time).

    Each helper a script defines costs the server on every call (``lua_library``): only those used are.
    """
    text = _LIBRARY.script(body)
    return SERVER_CLOCK + text if "now_ms" in names_in(text) else text


# The enqueue script without its clock, for a script that embeds it (see SERVER_CLOCK).
ENQUEUE_BODY = _LIBRARY.script(r"""
-- ARGV: 4.. groups of 6: id, node type, score (-priority), max attempts or '', raw bytes,
-- workflow id; then the raw-bytes limit and its reason (RAW_MAX, OVERSIZED). Returns one 1 (queued) or 0 (id seen before) per task, in order: a
-- step's tasks are queued in one script (one round trip).
local out = {}
local seen_types, order = {}, {}
RAW_MAX, OVERSIZED = tonumber(ARGV[#ARGV - 1]), ARGV[#ARGV]

-- The first live registration on the idle list of type t, taken off the list: its claimer
-- id and fields {worker, lease ms, max tasks, until (ms), node types JSON}, and the time;
-- nil when none is left (registrations that ran out leave the list on the way).
local function next_parked(t)
  local idle = k_idle(t)
  while true do
    local c = redis.call('LPOP', idle)
    if not c then return nil end
    local f = redis.call('HMGET', k_park(c), 'w', 'l', 'm', 'u', 'ty')
    local now = now_ms()
    if f[1] and tonumber(f[4]) > now + PARK_MARGIN then return c, f, now end
  end
end

-- Registration c (fields f, as next_parked gives them, taken off the idle list of type t)
-- was handed got tasks (items: 6 per task, as lease_task appends them): with room left it
-- stays parked, first in line; the tasks go to its hand-over list as one message, which its
-- blocked BLPOP returns; the wake-up tokens of its types with nothing ready go (they would
-- only wake claimers for nothing; empty: every ready set of types is known to be empty).
local function handed(c, f, types, got, items, t, empty)
  local room = tonumber(f[3])
  if got >= room then
    redis.call('DEL', k_park(c))
  else
    redis.call('HSET', k_park(c), 'm', room - got)
    redis.call('LPUSH', k_idle(t), c)
  end
  if got > 0 then
    redis.call('RPUSH', k_handoff(c), frame(items))
    redis.call('PEXPIRE', k_handoff(c), tonumber(f[2]) + 60000)
    for _, each in ipairs(types) do
      if empty or redis.call('ZCARD', k_ready(each)) == 0 then redis.call('DEL', P .. ':q:wake:' .. each) end
    end
  end
end

-- One new task (a workflow's create, a one-node step) and, first in line for its type, a
-- live registration whose types have nothing ready (time applied): the task is leased to it
-- at once, as take() leases a task (attempt 1, its place in the queue, lease
-- <claimer>:<n>:1), without passing through the ready set, a wake-up token and the checks
-- of a hash just written here. Returns the reply, or nil: the general way below applies
-- (the registration is first in line again; the task's id is known to be new).
local fresh = false
local function hand_one()
  local id, t, raw = ARGV[4], ARGV[5], ARGV[8]
  if RAW_MAX > 0 and #raw > RAW_MAX then return nil end
  local h = k_task(id)
  if redis.call('EXISTS', h) == 1 then return {0} end
  fresh = true
  local c, f, now = next_parked(t)
  if not c then return nil end
  local types = cjson.decode(f[5])
  for _, each in ipairs(types) do tick(each, now) end
  for _, each in ipairs(types) do
    if redis.call('ZCARD', k_ready(each)) > 0 then
      redis.call('LPUSH', k_idle(t), c)
      fresh = false  -- (time applied may have written any hash: look again)
      return nil
    end
  end
  local n = redis.call('INCR', P .. ':q:seq')
  local items = {}
  lease_task(h, id, t, raw, 1, c .. ':' .. n .. ':1', now + tonumber(f[2]), f[1], items,
             {'type', t, 'score', ARGV[6], 'max', ARGV[7], 'raw', raw, 'wf', ARGV[9], 'attempt', 1,
              'member', string.format('%016d', n) .. id})
  redis.call('SADD', P .. ':q:types', t)
  handed(c, f, types, 1, items, t, true)
  return {1}
end
if #ARGV == 11 then
  local reply = hand_one()
  if reply then return reply end
end

for i = 4, #ARGV - 2, 6 do
  local id, t = ARGV[i], ARGV[i + 1]
  local h = k_task(id)
  if not fresh and redis.call('EXISTS', h) == 1 then
    out[#out + 1] = 0
  else
    local member = new_member(id)
    redis.call('HSET', h, 'type', t, 'score', ARGV[i + 2], 'max', ARGV[i + 3], 'raw', ARGV[i + 4],
               'wf', ARGV[i + 5], 'attempt', 0, 'member', member, 'state', 'queued')
    if not seen_types[t] then
      seen_types[t] = true
      order[#order + 1] = t
      redis.call('SADD', P .. ':q:types', t)
    end
    redis.call('ZADD', k_ready(t), ARGV[i + 2], member)
    wake(t)
    out[#out + 1] = 1
  end
end
-- Hand the new tasks to parked claimers of their types, oldest registration first (each
-- takes up to its max tasks, by priority then FIFO as a claim would; one with room left
-- stays parked); their wake-up tokens go with them.
local ticked = {}
for _, t in ipairs(order) do
  while redis.call('ZCARD', k_ready(t)) > 0 do
    local c, f, now = next_parked(t)
    if not c then break end
    local types = cjson.decode(f[5])
    for _, each in ipairs(types) do
      if not ticked[each] then
        ticked[each] = true
        tick(each, now)
      end
    end
    local items = {}
    local base = c .. ':' .. redis.call('INCR', P .. ':q:seq')
    local got = take(types, tonumber(f[3]), f[1], base, tonumber(f[2]), now, items)
    handed(c, f, types, got, items, t, false)
  end
end
return out
""")
ENQUEUE = SERVER_CLOCK + ENQUEUE_BODY

CLAIM = _script(r"""
-- ARGV: 4 worker id, 5 lease id base, 6 lease ms, 7 max tasks, 8 claimer id ('' none),
--       9 ms to stay parked when nothing is claimed (0: do not park), 10 the raw-bytes
--       limit (RAW_MAX), 11 its reason (OVERSIZED), 12.. node types
-- Returns {ms until the next delayed release or lease expiry of these types (-1: none; -2:
--          max tasks claimed, so tasks may be left), id, raw, attempt, lease id, deadline ms, node type,
--          id, ...}
-- With a claimer id, tasks handed to its earlier registration (after its wait ended) come
-- first, and its registration ends; it parks again when nothing is claimed.
local worker, base, lease_ms, want = ARGV[4], ARGV[5], tonumber(ARGV[6]), tonumber(ARGV[7])
local c, park_ms = ARGV[8], tonumber(ARGV[9])
RAW_MAX, OVERSIZED = tonumber(ARGV[10]), ARGV[11]
local types = {}
for i = 12, #ARGV do types[#types + 1] = ARGV[i] end
local now = now_ms()
for _, t in ipairs(types) do tick(t, now) end
local out = {-1}
local n = 0
if c ~= '' then
  redis.call('DEL', k_park(c))
  local messages = redis.call('LRANGE', k_handoff(c), 0, -1)
  if #messages > 0 then redis.call('DEL', k_handoff(c)) end
  for _, message in ipairs(messages) do
    local items = unframe(message)
    for i = 1, #items, 6 do
      -- Still leased as handed over (not expired and re-queued meanwhile)? Past max
      -- tasks (an earlier registration asked for more) it goes back to the queue.
      if n >= want then
        give_back(items[i], items[i + 3])
      else
        local f = redis.call('HMGET', k_task(items[i]), 'state', 'lease')
        if f[1] == 'claimed' and f[2] == items[i + 3] then
          for j = i, i + 5 do out[#out + 1] = items[j] end
          n = n + 1
        end
      end
    end
  end
end
n = n + take(types, want - n, worker, base, lease_ms, now, out)
-- Tokens left for a type with nothing ready would wake claimers for nothing.
for _, t in ipairs(types) do
  if redis.call('ZCARD', k_ready(t)) == 0 then redis.call('DEL', P .. ':q:wake:' .. t) end
end
if n < want then  -- every ready set of these types is empty now
  local next_at = nil
  for _, t in ipairs(types) do
    for _, key in ipairs({k_delayed(t), k_leased(t)}) do
      local head = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
      if head[1] then
        local s = tonumber(head[2])
        if next_at == nil or s < next_at then next_at = s end
      end
    end
  end
  if next_at ~= nil then out[1] = math.max(next_at - now, 0) end
else
  out[1] = -2
end
if n == 0 and c ~= '' and park_ms > 0 then
  local h = k_park(c)
  redis.call('HSET', h, 'w', worker, 'l', lease_ms, 'm', want, 'u', now + park_ms, 'ty', cjson.encode(types))
  redis.call('PEXPIRE', h, park_ms + 1000)
  for _, t in ipairs(types) do
    local idle = k_idle(t)
    redis.call('LREM', idle, 0, c)
    redis.call('RPUSH', idle, c)
    redis.call('PEXPIRE', idle, park_ms + 60000)
  end
end
return out
""")

UNPARK = _script(r"""
-- ARGV: 4.. claimer ids. Ends their registrations and gives back, at once and without
-- counting the attempt, tasks handed to them that they never took (their owner closes).
local n = 0
for i = 4, #ARGV do
  local c = ARGV[i]
  redis.call('DEL', k_park(c))
  local messages = redis.call('LRANGE', k_handoff(c), 0, -1)
  redis.call('DEL', k_handoff(c))
  for _, message in ipairs(messages) do
    local items = unframe(message)
    for j = 1, #items, 6 do n = n + give_back(items[j], items[j + 3]) end
  end
end
return n
""")

BAD_PAYLOAD = _script(r"""
-- ARGV: 4 id, 5 lease id, 6 reason. Dead-letter a delivery whose bytes did not decode;
-- the delivery does not count as an attempt (nothing ran).
local id, lease = ARGV[4], ARGV[5]
local now = now_ms()
local h = k_task(id)
local f = redis.call('HMGET', h, 'type', 'state', 'lease', 'attempt')
if not f[1] or f[2] ~= 'claimed' or f[3] ~= lease then return 0 end
redis.call('ZREM', k_leased(f[1]), id)
if redis.call('HSTRLEN', h, 'raw') > RAW_KEPT then
  redis.call('HSET', h, 'raw', string.sub(redis.call('HGET', h, 'raw'), 1, RAW_KEPT))
end
dead_letter(id, f[1], ARGV[6], tonumber(f[4]) - 1, now, '1')
return 1
""")

EXTEND = _script(r"""
-- ARGV: 4 id, 5 lease id, 6 lease ms. Returns the new deadline (ms) or -1 if the lease is lost.
local id, lease = ARGV[4], ARGV[5]
local now = now_ms()
local state, t = check_held(id, lease, '-', now)
if state ~= 'held' then return -1 end
local deadline = now + tonumber(ARGV[6])
redis.call('HSET', k_task(id), 'deadline', deadline)
redis.call('ZADD', k_leased(t), deadline, id)
return deadline
""")

ACK = _script(r"""
-- ARGV: 4 id, 5 lease id, 6 op id, 7 result JSON; optionally 8 the acking worker's parked
--       registration (claimer id), 9 ms since that claimer last claimed (0: claiming now),
--       10 how long a registration lasts after its claimer's last claim (ms), 11 the most
--       tasks the claim using it takes (its room never grows past that; absent: no bound).
-- Returns 1, or -1 if the lease is lost; 2 when it also gave the registration the task's
-- slot back, 3 when it also made the registration last 10 ms after the claimer's last claim,
-- 4 when it did that but the registration's room was full already (no slot given back).
local id, lease, op = ARGV[4], ARGV[5], ARGV[6]

-- The worker's slot is free again: its parked registration, while live, may be handed one
-- more task (room + 1, up to what its claim takes: a worker may count a task's slot free
-- before its ack, core.worker "Slots"), and lasts ARGV[10] ms after the claimer's last claim
-- (renewed when less than half of that is left): under steady traffic a parked worker never
-- registers again (no claim script, no second wait), and one that stopped claiming still runs out.
local function top_up(c, now, age, park_ms, cap)
  local h = k_park(c)
  local f = redis.call('HMGET', h, 'u', 'ty', 'm')
  local u = tonumber(f[1])
  if not u or u <= now + PARK_MARGIN then return 1 end  -- gone, or taken off its idle lists
  local grew = not cap or (tonumber(f[3]) or 0) < cap
  if grew then redis.call('HINCRBY', h, 'm', 1) end
  local ends = now - age + park_ms
  if u - now < park_ms / 2 and ends > u then
    redis.call('HSET', h, 'u', ends)
    redis.call('PEXPIRE', h, ends - now + 1000)
    for _, t in ipairs(cjson.decode(f[2])) do redis.call('PEXPIRE', k_idle(t), ends - now + 60000) end
    if grew then return 3 end
    return 4
  end
  if grew then return 2 end
  return 1
end
local now = now_ms()
local state, t, attempt = check_held(id, lease, op, now)
if state == 'settled' then return 1 end
if state ~= 'held' then return -1 end
local h = k_task(id)
redis.call('ZREM', k_leased(t), id)
redis.call('HDEL', h, 'raw', 'deadline', 'member', 'worker')
-- The hash stays as a tombstone for result_ttl so that enqueue stays idempotent.
redis.call('HSET', h, 'state', 'done', 'lease', '', 'settled', op .. '|1')
redis.call('PEXPIRE', h, RESULT_TTL)
-- A first attempt has no errors kept (a nack or an expired lease writes them, and the next
-- delivery is attempt 2 or later; a requeue deletes them).
if attempt ~= '1' then redis.call('DEL', k_errors(id)) end
store_result(id, ARGV[7])
if ARGV[8] and ARGV[8] ~= '' then return top_up(ARGV[8], now, tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11])) end
return 1
""")

NACK = _script(r"""
-- ARGV: 4 id, 5 lease id, 6 op id, 7 error, 8 delay ms, 9 final ('1'/'0').
-- Returns 1 (delivered again), 0 (dead-lettered) or -1 (lease lost).
local id, lease, op = ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()
local state, t = check_held(id, lease, op, now)
if state == 'settled' then return tonumber(t) end
if state ~= 'held' then return -1 end
local h = k_task(id)
local f = redis.call('HMGET', h, 'attempt', 'max')
local attempt, limit = count_of(f[1]), limit_of(h)
redis.call('ZREM', k_leased(t), id)
redis.call('RPUSH', k_errors(id), 'attempt ' .. (attempt or shown(f[1])) .. ': ' .. ARGV[7])
redis.call('HSET', h, 'lease', '')
if attempt == nil or limit == nil then  -- edited by hand while it ran: dead-lettered, saying which field
  local reason = attempt == nil and malformed(h, 'attempt', f[1], 'an attempt count')
                 or malformed(h, 'max', f[2], 'a number of attempts')
  dead_letter(id, t, reason, attempt or 0, now, '1')
  redis.call('HSET', h, 'settled', op .. '|0')
  return 0
end
if ARGV[9] == '1' or attempt >= limit then
  dead_letter(id, t, ARGV[7], attempt, now, '0')
  redis.call('HSET', h, 'settled', op .. '|0')
  return 0
end
-- A nacked task goes to the back of its priority.
redis.call('HSET', h, 'member', new_member(id), 'settled', op .. '|1')
redis.call('HDEL', h, 'deadline', 'worker')
local delay = tonumber(ARGV[8])
if delay > 0 then
  redis.call('HSET', h, 'state', 'delayed')
  redis.call('ZADD', k_delayed(t), now + delay, id)
  wake(t)  -- waiting claimers learn the new earliest release time
else
  push_ready(id, t)
end
return 1
""")

RELEASE = _script(r"""
-- ARGV: 4 id, 5 lease id, 6 op id. Back to the queue at its old place, attempt not counted.
local id, lease, op = ARGV[4], ARGV[5], ARGV[6]
local now = now_ms()
local state, t = check_held(id, lease, op, now)
if state == 'settled' then return 1 end
if state ~= 'held' then return -1 end
local h = k_task(id)
redis.call('ZREM', k_leased(t), id)
redis.call('HSET', h, 'lease', '', 'settled', op .. '|1')
redis.call('HDEL', h, 'deadline', 'worker')
if uncount(id, t) then push_ready(id, t) end
return 1
""")

RESULTS = _script(r"""
-- ARGV: 4.. task ids. Applies time to the node types of claimed tasks among them (an
-- expired last lease dead-letters a task, which gives it a failed result), then returns
-- {ms until the earliest lease deadline among them (-1: none), result or false, ...}.
local now = now_ms()
local out = {-1}
local missing = false
for i = 4, #ARGV do
  local r = result_of(ARGV[i])
  out[#out + 1] = r or false
  if not r then missing = true end
end
if not missing then return out end
local ticked = {}
for i = 4, #ARGV do
  if not out[i - 2] then
    local f = redis.call('HMGET', k_task(ARGV[i]), 'state', 'type')
    if f[1] == 'claimed' and not ticked[f[2]] then
      ticked[f[2]] = true
      tick(f[2], now)
    end
  end
end
local next_at = nil
for i = 4, #ARGV do
  if not out[i - 2] then
    local r = result_of(ARGV[i])
    if r then
      out[i - 2] = r
    else
      local f = redis.call('HMGET', k_task(ARGV[i]), 'state', 'deadline')
      if f[1] == 'done' or f[1] == 'dead' then
        -- Settled, but its result is gone (evicted by a maxmemory policy, or deleted): reported,
        -- or a waiter would wait for ever for a result nothing will write again.
        out[i - 2] = '\2' .. f[1]
      end
      if f[1] == 'claimed' and f[2] then
        local d = tonumber(f[2])
        if next_at == nil or d < next_at then next_at = d end
      end
    end
  end
end
if next_at ~= nil then out[1] = math.max(next_at - now, 0) end
return out
""")

CANCEL = _script(r"""
-- ARGV: 4 id. Removes a queued or delayed task; its hash stays as a tombstone.
local id = ARGV[4]
local h = k_task(id)
local f = redis.call('HMGET', h, 'state', 'type', 'member')
if f[1] ~= 'queued' and f[1] ~= 'delayed' then return 0 end
redis.call('ZREM', k_ready(f[2]), f[3])
redis.call('ZREM', k_delayed(f[2]), id)
redis.call('HDEL', h, 'raw', 'member')
redis.call('HSET', h, 'state', 'cancelled')
redis.call('PEXPIRE', h, RESULT_TTL)
redis.call('DEL', k_errors(id))
return 1
""")

DEAD_LETTERS = _script(r"""
-- ARGV: 4 node type or '', 5 limit. Returns {{id, type, reason, attempts, raw, dead_at ms,
-- bad, {errors}}, ...}, oldest first.
local t, limit = ARGV[4], tonumber(ARGV[5])
local now = now_ms()
local key
if t == '' then
  for _, each in ipairs(redis.call('SMEMBERS', P .. ':q:types')) do tick(each, now) end
  key = P .. ':q:dead'
else
  tick(t, now)
  key = k_dead(t)
end
local out = {}
if limit <= 0 then return out end
for _, id in ipairs(redis.call('ZRANGE', key, 0, limit - 1)) do
  local f = redis.call('HMGET', k_task(id), 'type', 'reason', 'attempt', 'raw', 'dead_at', 'bad')
  out[#out + 1] = {id, f[1] or '', f[2] or '', f[3] or '0', f[4] or '', f[5] or '0', f[6] or '0',
                   redis.call('LRANGE', k_errors(id), 0, -1)}
end
return out
""")

REQUEUE = _script(r"""
-- ARGV: 4 id. A decodable dead letter goes back to the end of its priority, attempt 0.
local id = ARGV[4]
local h = k_task(id)
local f = redis.call('HMGET', h, 'state', 'type', 'bad')
if f[1] ~= 'dead' or f[3] == '1' then return 0 end
local t = f[2]
redis.call('ZREM', k_dead(t), id)
redis.call('ZREM', P .. ':q:dead', id)
redis.call('DEL', k_result(id), k_errors(id))
redis.call('HDEL', h, 'reason', 'dead_at', 'bad', 'settled')
redis.call('HSET', h, 'attempt', 0, 'member', new_member(id))
push_ready(id, t)
-- An event without a result: whoever kept the dead letter's failed-result event drops it.
redis.call('PUBLISH', P .. ':q:ev:done', id .. '\n')
return 1
""")

PURGE = _script(r"""
-- ARGV: 4 id. Deletes a dead letter; the hash stays as a tombstone as long as the result.
local id = ARGV[4]
local h = k_task(id)
local f = redis.call('HMGET', h, 'state', 'type')
if f[1] ~= 'dead' then return 0 end
redis.call('ZREM', k_dead(f[2]), id)
redis.call('ZREM', P .. ':q:dead', id)
redis.call('DEL', k_errors(id))
redis.call('HDEL', h, 'raw', 'member', 'reason', 'dead_at', 'bad')
redis.call('HSET', h, 'state', 'purged')
local ttl = redis.call('PTTL', k_result(id))
if ttl > 0 then redis.call('PEXPIRE', h, ttl) else redis.call('DEL', h) end
return 1
""")

STATS = _script(r"""
-- ARGV: 4 node type. Returns {queued (ready + delayed), in flight, dead}.
local t = ARGV[4]
tick(t, now_ms())
return {redis.call('ZCARD', k_ready(t)) + redis.call('ZCARD', k_delayed(t)),
        redis.call('ZCARD', k_leased(t)), redis.call('ZCARD', k_dead(t))}
""")
