-- lb_rebuild_merge.lua: add a chunk of recomputed figures to the staging boards (which already
-- hold the completions since the rebuild began) and keep the rebuild's marker alive.
-- KEYS[1] marker  KEYS[2] staging currencies set
-- ARGV[1] token  ARGV[2] marker TTL (ms)  ARGV[3] staging key prefix
-- then 9 per row: kind ("c" customer | "p" product), currency, id (customer id | SKU),
--   amount (customer: cents spent | product: units), revenue cents (product) or "",
--   orders, name, first order date (customer) or "", last key "<order_date>|<order_id>"
-- Returns "ok", or "lost" when the marker is gone or another rebuild's (nothing written).
-- include: leaderboard
if redis.call("GET", KEYS[1]) ~= ARGV[1] then
  return "lost"
end
redis.call("PEXPIRE", KEYS[1], ARGV[2])
-- The rows go through the same sums and flush as the live completions (lib/leaderboard.lua).
local batch = lb_batch(ARGV[3], KEYS[2])
for b = 4, #ARGV, 9 do
  local cur = ARGV[b + 1]
  if ARGV[b] == "c" then
    lb_add_customer(batch, cur, ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5]),
      ARGV[b + 6], ARGV[b + 7], ARGV[b + 8])
  else
    lb_add_product(batch, cur, ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
      tonumber(ARGV[b + 5]), ARGV[b + 6], ARGV[b + 8])
  end
end
lb_flush(batch)
return "ok"
