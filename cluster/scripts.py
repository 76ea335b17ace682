"""Every Lua script the cluster runs, each with its KEYS / ARGV / returns header.

A compare-and-act on a room touches only keys under that room's hash tag, so each script runs
on one Redis Cluster slot. Scripts are written for Redis 6.2 (the embedded server's version).
"""

from __future__ import annotations

# Append one durable event to a room's log, fenced by the owner's epoch.
# KEYS: 1 lease hash, 2 seq counter, 3 log stream, 4 dedupe key, 5 closed flag, 6 state stream,
#       7 reservation, 8 deleted-messages zset
# ARGV: 1 node, 2 epoch, 3 seq floor (the new seq must exceed it), 4 MAXLEN (approximate, >=),
#       5 dedupe TTL seconds, 6 event JSON (no seq), 7 pub/sub channel, 8 event id ("" = "m"..seq),
#       9 "1" to dedupe by KEYS[4], 10 CRDT delta JSON for the state stream ("" = none),
#       11 placeholder in ARGV[10] to replace by the seq (a random token absent from the text),
#       12 the seq reservation the event is issued under ("" = none: unchecked, unrecorded),
#       13 id of the message this event deletes ("" = none), 14 that message's seq,
#       15 publish command: "SPUBLISH" on a Redis Cluster 7+ (the channel in ARGV[7] hashes to
#          the room's slot, so a sharded publish from this script is legal), else "PUBLISH"
#          (also when absent)
# Each entry also records its writer (``w`` = node@epoch): an audit trail for fencing.
# returns: {"ok", seq, id} | {"dup", seq, id} | {"fenced", owner, epoch} | {"closed"}
#          | {"unreserved", next seq} (above ARGV[12]: reserve more, then append again)
# Why one script: dedupe, seq assignment, the append and the publish must be one step, or a
# crash between them leaves a seq without an event or an event nobody was told about. The
# reservation rides along for the same reason: replication and the AOF keep a prefix of these
# steps, so Redis holds reservation R exactly when it holds an append issued under R.
APPEND_EVENT = """
local owner = redis.call('HGET', KEYS[1], 'node')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if owner ~= ARGV[1] or epoch ~= ARGV[2] then
  return {'fenced', owner or '', epoch or ''}
end
if redis.call('EXISTS', KEYS[5]) == 1 then
  return {'closed'}
end
if ARGV[9] == '1' then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    local sep = string.find(prior, ' ', 1, true)
    return {'dup', string.sub(prior, 1, sep - 1), string.sub(prior, sep + 1)}
  end
end
local seq = tonumber(redis.call('GET', KEYS[2]) or '0') + 1
local floor = tonumber(ARGV[3])
if seq <= floor then seq = floor + 1 end
local reservation = tonumber(ARGV[12])
if reservation and seq > reservation then
  return {'unreserved', tostring(seq)}
end
redis.call('SET', KEYS[2], seq)
local id = ARGV[8]
if id == '' then id = 'm' .. seq end
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], seq .. '-0',
           'e', ARGV[6], 'w', ARGV[1] .. '@' .. ARGV[2])
if reservation and tonumber(redis.call('GET', KEYS[7]) or '0') < reservation then
  redis.call('SET', KEYS[7], ARGV[12])
end
if ARGV[9] == '1' then
  redis.call('SET', KEYS[4], seq .. ' ' .. id, 'EX', ARGV[5])
end
if ARGV[10] ~= '' then
  local delta = string.gsub(ARGV[10], ARGV[11], tostring(seq))
  redis.call('XADD', KEYS[6], '*', 'd', delta, 's', seq)
end
if ARGV[13] ~= '' then
  redis.call('ZADD', KEYS[8], ARGV[14], ARGV[13])
  -- Forget deletes of messages the log no longer keeps (they cannot be found anyway).
  local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
  if first[1] then
    local kept = tonumber(string.match(first[1][1], '^(%d+)'))
    redis.call('ZREMRANGEBYSCORE', KEYS[8], '-inf', '(' .. kept)
  end
end
local publish = ARGV[15]
if publish ~= 'SPUBLISH' then publish = 'PUBLISH' end
redis.call(publish, ARGV[7], 'E' .. seq .. ' ' .. ARGV[6])
return {'ok', tostring(seq), id}
"""

# Claim a room's lease with a new, higher fencing epoch.
# KEYS: 1 lease hash, 2 epoch counter
# ARGV: 1 claiming node, 2 node presumed dead whose lease may be taken over ("" = none),
#       3 epoch floor (the new epoch must exceed it: survives a Redis that lost the counter)
# returns: {"ok", node, epoch} | {"taken", owner, epoch}
# A node may re-claim its own lease: the new epoch fences any older server it still runs.
CLAIM_LEASE = """
local owner = redis.call('HGET', KEYS[1], 'node')
if owner and owner ~= ARGV[1] and owner ~= ARGV[2] then
  return {'taken', owner, redis.call('HGET', KEYS[1], 'epoch') or ''}
end
local e = redis.call('INCR', KEYS[2])
local floor = tonumber(ARGV[3])
if e <= floor then
  e = floor + 1
  redis.call('SET', KEYS[2], e)
end
redis.call('HSET', KEYS[1], 'node', ARGV[1], 'epoch', e)
return {'ok', ARGV[1], tostring(e)}
"""

# Release a lease if (and only if) it is still ours at this epoch.
# KEYS: 1 lease hash
# ARGV: 1 node, 2 epoch
# returns: 1 released, 0 not ours any more
RELEASE_LEASE = """
if redis.call('HGET', KEYS[1], 'node') == ARGV[1]
   and redis.call('HGET', KEYS[1], 'epoch') == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# Keep a node alive: renew its liveness key if it still holds our session token.
# KEYS: 1 node liveness key
# ARGV: 1 session token, 2 TTL ms, 3 "register" to create it, "renew" to only extend it
# returns: {status, redis_time_ms}; status "ok" or "lost" (the key expired or was replaced:
#          the cluster presumed us dead and may have taken our rooms)
NODE_HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local current = redis.call('GET', KEYS[1])
if ARGV[3] == 'register' or current == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'ok', tostring(now)}
end
return {'lost', tostring(now)}
"""

# Raise a room's seq counter to at least a floor (after Redis lost it); never lowers it.
# KEYS: 1 seq counter
# ARGV: 1 floor
# returns: the counter's value afterwards
RAISE_SEQ_FLOOR = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if current < floor then
  redis.call('SET', KEYS[1], floor)
  return floor
end
return current
"""

# Write a snapshot of a room's CRDT state and drop the deltas it covers, if still the owner.
# KEYS: 1 lease hash, 2 state stream
# ARGV: 1 node, 2 epoch, 3 snapshot JSON, 4 the seq it covers
# returns: 1 written, 0 fenced (a stale owner must not compact away its successor's deltas)
WRITE_SNAPSHOT = """
if redis.call('HGET', KEYS[1], 'node') ~= ARGV[1]
   or redis.call('HGET', KEYS[1], 'epoch') ~= ARGV[2] then
  return 0
end
local id = redis.call('XADD', KEYS[2], '*', 'snap', ARGV[3], 's', ARGV[4])
redis.call('XTRIM', KEYS[2], 'MINID', id)
return 1
"""

# Put archived events back into a room's log (Redis lost it; the database kept them), if still
# the owner. Only above the log's last entry: stream ids only grow, and what Redis still holds
# is never rewritten.
# KEYS: 1 lease hash, 2 seq counter, 3 log stream, 4 deleted-messages zset
# ARGV: 1 node, 2 epoch, 3 MAXLEN (approximate, >=), then per event, oldest first, four
#       values: seq, event JSON (no seq), id of the message it deletes ("" = none), its seq
# returns: {"ok", events written} | {"fenced", owner, epoch}
# Why one script: the fence check and the writes must be one step, or a fenced node could
# write old events above what its successor appended since.
RESTORE_EVENTS = """
local owner = redis.call('HGET', KEYS[1], 'node')
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if owner ~= ARGV[1] or epoch ~= ARGV[2] then
  return {'fenced', owner or '', epoch or ''}
end
local last = 0
local newest = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
if newest[1] then last = tonumber(string.match(newest[1][1], '^(%d+)')) end
local written = 0
local high = 0
for i = 4, #ARGV, 4 do
  local seq = tonumber(ARGV[i])
  if seq > last then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], seq .. '-0',
               'e', ARGV[i + 1], 'w', ARGV[1] .. '@' .. ARGV[2])
    if ARGV[i + 2] ~= '' then
      redis.call('ZADD', KEYS[4], ARGV[i + 3], ARGV[i + 2])
    end
    last = seq
    high = seq
    written = written + 1
  end
end
if high > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], high)
end
return {'ok', tostring(written)}
"""
