-- snapshot_compact.lua: swap merged files for the one file holding their facts, in one step.
-- Refused when a source left the manifest meanwhile (another compaction took it), while a
-- leaderboard rebuild runs, or while a source's completions are still being added to the boards
-- (a stalled one's rows are summed again from its file). The facts do not change, so the version
-- and the KPI cache stay.
-- KEYS[1] manifest hash  KEYS[2] trash (file -> ms it left the manifest)  KEYS[3] rebuild marker
-- KEYS[4] leaderboard pending hash
-- ARGV[1] merged file name  ARGV[2] its info (JSON)  ARGV[3] now (ms)  ARGV[4..] source names
-- Returns "ok", "held" or "gone".
if redis.call("EXISTS", KEYS[3]) == 1 then
  return "held"
end
for i = 4, #ARGV do
  if redis.call("HEXISTS", KEYS[1], ARGV[i]) == 0 then
    return "gone"
  end
  if redis.call("HEXISTS", KEYS[4], ARGV[i]) == 1 then
    return "held"
  end
end
for i = 4, #ARGV do
  redis.call("HDEL", KEYS[1], ARGV[i])
  redis.call("ZADD", KEYS[2], ARGV[3], ARGV[i])
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return "ok"
