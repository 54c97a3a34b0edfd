-- notify_expire.lua: drop notification records created before a cutoff, with every index entry,
-- schedule entry and lease they have, so memory stays bounded (retention). At most ARGV[2]
-- records per call; the caller repeats until a call drops fewer.
-- KEYS[1] records hash  KEYS[2] leases hash  KEYS[3] schedule zset  KEYS[4..] the index sets
-- ARGV[1] cutoff score (records scored below it go)  ARGV[2] most records to drop
-- ARGV[3] customer index key prefix
-- Returns the number of records dropped.
-- include: notification
local cutoff, budget, customer_prefix = "(" .. ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dropped = 0
for k = 4, #KEYS do
  if dropped >= budget then
    break
  end
  local ids = redis.call("ZRANGE", KEYS[k], "-inf", cutoff, "BYSCORE", "LIMIT", 0, budget - dropped)
  for _, id in ipairs(ids) do
    local record = redis.call("HGET", KEYS[1], id)
    local customer = record and note_customer(record)
    if customer then
      redis.call("ZREM", customer_prefix .. customer, id)
    end
    redis.call("HDEL", KEYS[1], id)
    redis.call("HDEL", KEYS[2], id)
    redis.call("ZREM", KEYS[3], id)
    redis.call("ZREM", KEYS[k], id)
  end
  dropped = dropped + #ids
end
return dropped
