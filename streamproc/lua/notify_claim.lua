-- notify_claim.lua: lease notification records to one consumer before it sends them, so two live
-- consumers handling the same reclaimed entry never both write it. A lease held by another owner
-- and not yet expired answers "busy"; otherwise the caller gets the lease and the stored record.
-- KEYS[1] notifications hash (id -> record JSON)  KEYS[2] leases hash (id -> owner|expiry ms)
-- ARGV[1] owner  ARGV[2] now (ms)  ARGV[3] lease ttl (ms)  ARGV[4..] record ids
-- Returns 2 values per id: "busy" and "", or "ok" and the stored record ("" when none).
local owner, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  local lease = redis.call("HGET", KEYS[2], id)
  local busy = false
  if lease then
    local sep = string.find(lease, "|", 1, true)
    local holder, expiry = string.sub(lease, 1, sep - 1), tonumber(string.sub(lease, sep + 1))
    busy = holder ~= owner and expiry > now
  end
  if busy then
    out[#out + 1] = "busy"
    out[#out + 1] = ""
  else
    redis.call("HSET", KEYS[2], id, owner .. "|" .. (now + ttl))
    out[#out + 1] = "ok"
    out[#out + 1] = redis.call("HGET", KEYS[1], id) or ""
  end
end
return out
