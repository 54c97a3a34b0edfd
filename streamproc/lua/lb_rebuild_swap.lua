-- lb_rebuild_swap.lua: put the staging boards in place of the live ones in one step (readers see
-- the old boards or the new, never a mix or an empty board), and end the rebuild. The staging
-- boards hold every registered file whole, so the chunks of files still being added to the old
-- boards are dropped (lb_apply.lua then finds their records gone).
-- KEYS[1] marker  KEYS[2] live currencies set  KEYS[3] staging currencies set
-- KEYS[4] leaderboard pending hash
-- ARGV[1] token  ARGV[2] live key prefix  ARGV[3] staging key prefix  ARGV[4..] board names
-- Returns "ok", or "lost" when the marker expired or belongs to another rebuild.
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return "lost"
end
local currencies, seen = {}, {}
for _, set in ipairs({ KEYS[2], KEYS[3] }) do
  for _, cur in ipairs(redis.call("SMEMBERS", set)) do
    if not seen[cur] then
      seen[cur] = true
      currencies[#currencies + 1] = cur
    end
  end
end
for _, cur in ipairs(currencies) do
  for b = 4, #ARGV do
    local live, staged = ARGV[2] .. cur .. ":" .. ARGV[b], ARGV[3] .. cur .. ":" .. ARGV[b]
    -- UNLINK first: freeing a board of millions of members happens off the main thread.
    redis.call("UNLINK", live)
    if redis.call("EXISTS", staged) == 1 then
      redis.call("RENAME", staged, live)
    end
  end
end
if redis.call("EXISTS", KEYS[3]) == 1 then
  redis.call("RENAME", KEYS[3], KEYS[2])
else
  redis.call("DEL", KEYS[2])
end
redis.call("DEL", KEYS[4])
redis.call("DEL", KEYS[1])
return "ok"
