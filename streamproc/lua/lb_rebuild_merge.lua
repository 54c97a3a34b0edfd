-- lb_rebuild_merge.lua: add a chunk of recomputed figures to the staging boards and keep the
-- rebuild's marker alive.
-- KEYS[1] marker  KEYS[2] staging currencies set
-- ARGV[1] token  ARGV[2] marker TTL (ms)  ARGV[3] staging key prefix
-- then 9 per row (lib/leaderboard.lua, lb_add_rows)
-- Returns "ok", or "lost" when the marker is gone or another rebuild's (nothing written).
-- include: leaderboard
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return "lost"
end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
-- The rows go through the same sums and flush as a registered file's (lib/leaderboard.lua).
local batch = lb_batch(ARGV[3], KEYS[2])
lb_add_rows(batch, 4)
lb_flush(batch)
return "ok"
