-- notify_settle.lua: record what an attempt did, for records the caller still leases. One step per
-- batch keeps a record, its index (status), its schedule entry and its lease in agreement:
--   begin   store the record (attempts + 1, the log's offset) before a retried send
--   sent    store it sent; pending -> sent index; off the schedule; lease released
--   retry   store it (error, attempts) still pending; due again at the given time; lease released
--   failed  store it failed; pending -> failed index; off the schedule; lease released
-- A record that is no longer pending, or whose lease another consumer took (this one was too
-- slow and the record was attempted again), is left alone: that attempt's outcome stands.
-- KEYS[1] records hash  KEYS[2] leases hash  KEYS[3] schedule zset
-- ARGV[1] owner  ARGV[2] index key prefix
-- then 4 per item: record id, op (begin | sent | retry | failed), the record to store, due (ms,
-- retry only)
-- Returns one integer per item: 1 applied, 0 left alone.
-- include: notification
local owner, ix_prefix = ARGV[1], ARGV[2]
local n = (#ARGV - 2) / 4
local TO = { sent = "s", failed = "f" }
local out = {}
for i = 1, n do
  local b = 2 + 4 * (i - 1)
  local id, op, record, due = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local holder = note_lease(redis.call("HGET", KEYS[2], id))
  local current = redis.call("HGET", KEYS[1], id)
  if holder ~= owner or not current or note_status(current) ~= "p" then
    out[i] = 0
  else
    redis.call("HSET", KEYS[1], id, record)
    if op == "retry" then
      redis.call("ZADD", KEYS[3], due, id)
      redis.call("HDEL", KEYS[2], id)
    elseif op ~= "begin" then
      note_move(ix_prefix, id, "p", TO[op])
      redis.call("ZREM", KEYS[3], id)
      redis.call("HDEL", KEYS[2], id)
    end
    out[i] = 1
  end
end
return out
