-- notify_resend.lua: give a failed notification record one more attempt (API resend). The record
-- goes back to pending with the caller's new text (one more attempt allowed) and is due at once;
-- whichever notify consumer looks first sends it. Compare-and-set: the stored record must still be
-- the one the caller read, so a concurrent change is never overwritten.
-- KEYS[1] records hash  KEYS[2] schedule zset
-- ARGV[1] record id  ARGV[2] the record as read (status failed)  ARGV[3] the record to store
-- ARGV[4] due (ms)  ARGV[5] index key prefix
-- Returns "ok", "missing" or "changed".
-- include: notification
local id = ARGV[1]
local current = redis.call("HGET", KEYS[1], id)
if not current then
  return "missing"
end
if current ~= ARGV[2] or note_status(current) ~= "f" then
  return "changed"
end
redis.call("HSET", KEYS[1], id, ARGV[3])
note_move(ARGV[5], id, "f", "p")
redis.call("ZADD", KEYS[2], ARGV[4], id)
return "ok"
