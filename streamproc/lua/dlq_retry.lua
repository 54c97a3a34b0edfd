-- dlq_retry.lua: send one dead letter back to its stage with a fresh delivery budget (a new entry).
-- An order that was dead-lettered by this entry gets its previous state back and waits for the
-- stage again; the dead letter is removed in the same step.
-- KEYS[1] dead-letter stream  KEYS[2] state counts  KEYS[3] order hash  KEYS[4] stage stream
-- ARGV[1] dead-letter id  ARGV[2] stage (as read by the caller)  ARGV[3] now (ms)
-- ARGV[4] "1" when another stage's group reads the stage stream too (the facts stream): the entry
-- then carries for=<stage>, and the other stage acks it unread
-- The entry carries b=1 again when the dead letter kept it (a completion the leaderboards have not
-- counted yet).
-- Returns the new stage entry id; false when the dead letter is gone or names another stage;
-- "conflict:<state>" (and changes nothing) when its order has moved on since, e.g. re-submitted.
-- include: ms
-- include: order
local entries = redis.call("XRANGE", KEYS[1], ARGV[1], ARGV[1])
if #entries == 0 then
  return false
end
local f = {}
local raw = entries[1][2]
for i = 1, #raw, 2 do
  f[raw[i]] = raw[i + 1]
end
if f["stage"] ~= ARGV[2] then
  return false
end
local state = f["prev"] or ""
if state == "" then
  state = f["s"] or ""
elseif f["o"] ~= "" then
  local cur = redis.call("HMGET", KEYS[3], "s", "a", "h", "c")
  if cur[1] ~= "dead_lettered" or order_attempt(cur[2]) ~= f["a"] then
    return "conflict:" .. (cur[1] or "missing")
  end
  redis.call("HSET", KEYS[3], "s", state, "k", f["stage"], "h",
    order_advance(cur[3], cur[4], state, ARGV[3]))
  redis.call("HDEL", KEYS[3], "e")
  redis.call("HINCRBY", KEYS[2], "dead_lettered", -1)
  redis.call("HINCRBY", KEYS[2], state, 1)
end
-- The order's creation ms goes with the entry, as every stage's entry carries it: the stages find
-- the order's stock and gateway records by it (streamproc.keys.record_bucket).
local created = redis.call("HGET", KEYS[3], "c") or "0"
local entry = { "o", f["o"], "a", f["a"], "s", state, "d", f["d"], "c", created }
if f["b"] == "1" then
  entry[#entry + 1], entry[#entry + 2] = "b", "1"
end
if ARGV[4] == "1" then
  entry[#entry + 1], entry[#entry + 2] = "for", f["stage"]
end
local id = redis.call("XADD", KEYS[4], "*", unpack(entry))
redis.call("XDEL", KEYS[1], ARGV[1])
return id
