-- snapshot_register.lua: add a written file to the snapshot manifest and ack the facts-stream
-- entries it holds, in one step, so each fact is in exactly one registered file.
-- Fence: the entries are first claimed (XCLAIM JUSTID, which neither counts a delivery nor
-- touches an acked entry). Should any of them be acked already (another consumer took them over
-- while this one was paused, and registered them first), nothing is registered or acked and the
-- caller drops its file; the entries still pending stay with it to be written again.
-- Held: while a leaderboard rebuild runs, nothing is registered (its source must stay fixed).
-- KEYS[1] facts stream  KEYS[2] manifest hash  KEYS[3] manifest version  KEYS[4] KPI cache
-- KEYS[5] leaderboard rebuild marker
-- ARGV[1] group  ARGV[2] consumer  ARGV[3] file name  ARGV[4] file info (JSON)  ARGV[5..] ids
-- Returns "ok" (version in the second element), "held" or "conflict".
if redis.call("HEXISTS", KEYS[2], ARGV[3]) == 1 then
  -- A retry after a lost reply: this very file is registered already.
  return { "ok", tonumber(redis.call("GET", KEYS[3]) or "0") }
end
if redis.call("EXISTS", KEYS[5]) == 1 then
  return { "held", 0 }
end
local ids = {}
for i = 5, #ARGV do
  ids[#ids + 1] = ARGV[i]
end
local claimed = 0
for i = 1, #ids, 1000 do
  local args = { KEYS[1], ARGV[1], ARGV[2], 0 }
  for j = i, math.min(i + 999, #ids) do
    args[#args + 1] = ids[j]
  end
  args[#args + 1] = "JUSTID"
  claimed = claimed + #redis.call("XCLAIM", unpack(args))
end
if claimed < #ids then
  return { "conflict", 0 }
end
for i = 1, #ids, 1000 do
  redis.call("XACK", KEYS[1], ARGV[1], unpack(ids, i, math.min(i + 999, #ids)))
end
redis.call("HSET", KEYS[2], ARGV[3], ARGV[4])
redis.call("DEL", KEYS[4])
return { "ok", redis.call("INCR", KEYS[3]) }
