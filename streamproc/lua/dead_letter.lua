-- dead_letter.lua: move one message of a stage to the dead-letter stream, atomically with its ack.
-- When the order still waits for this stage in this attempt, it becomes dead_lettered (terminal):
-- its state before is kept in the dead letter (field prev) so `dlq retry` can restore it, and it
-- is enqueued on the facts stream (read by notify and the snapshot stage) like any terminal order
-- (with r=1 when it was terminal before, as commit.lua does).
-- KEYS[1] source stream  KEYS[2] dead-letter stream  KEYS[3] state counts  KEYS[4] order hash
-- KEYS[5] facts stream  KEYS[6] today's counters hash  KEYS[7] this second's throughput counter
-- ARGV[1] group  ARGV[2] msg id  ARGV[3] stage  ARGV[4] deliveries  ARGV[5] last error
-- ARGV[6] order id  ARGV[7] attempt  ARGV[8] payload ("" when unusable)  ARGV[9] now (ms)
-- ARGV[10] the state the message carried (kept so a retry re-sends it unchanged)
-- ARGV[11] "1" when the message carried b=1 (a completion the leaderboards have not counted):
-- kept in the dead letter so a retry enqueues it with b=1 again
-- Returns {the dead letter's id, ms since the order was submitted when it became dead_lettered
-- here (its end-to-end latency), else -1}.
-- include: ms
-- include: submitted
-- include: order
local group, msg, stage, deliveries, err = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local oid, attempt, payload, now, carried = ARGV[6], ARGV[7], ARGV[8], ARGV[9], ARGV[10]
local prev = ""
local elapsed = -1
if oid ~= "" then
  local cur = redis.call("HMGET", KEYS[4], "s", "a", "k", "h", "d", "c")
  if cur[1] and order_awaits(cur[3], cur[2], stage, attempt) then
    prev = cur[1]
    elapsed = elapsed_ms(tonumber(now), cur[6], cur[4], attempt)
    if payload == "" then
      payload = cur[5] or ""
    end
    redis.call("HSET", KEYS[4], "s", "dead_lettered", "k", "", "e", err,
      "h", order_advance(cur[4], cur[6], "dead_lettered", now))
    redis.call("HINCRBY", KEYS[3], prev, -1)
    redis.call("HINCRBY", KEYS[3], "dead_lettered", 1)
    local fields = { "o", oid, "a", attempt, "s", "dead_lettered", "d", payload, "c",
      cur[6] or "0" }
    if attempt ~= "1" or order_was_dead_lettered(cur[4]) then
      fields[11], fields[12] = "r", "1"
    end
    redis.call("XADD", KEYS[5], "*", unpack(fields))
    redis.call("INCRBY", KEYS[7], 1)
    redis.call("EXPIRE", KEYS[7], 300)
    redis.call("HINCRBY", KEYS[6], "dead_lettered", 1)
    redis.call("EXPIRE", KEYS[6], 691200, "NX")
  end
end
local letter = { "stage", stage, "id", msg, "deliveries", deliveries, "error", err, "o", oid,
  "a", attempt, "d", payload, "prev", prev, "s", carried, "at", now }
if ARGV[11] == "1" then
  letter[#letter + 1], letter[#letter + 2] = "b", "1"
end
local id = redis.call("XADD", KEYS[2], "*", unpack(letter))
redis.call("XACK", KEYS[1], group, msg)
return { id, elapsed }
