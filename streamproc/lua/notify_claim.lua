-- notify_claim.lua: lease notification records to one consumer before it sends them, so two live
-- consumers handling the same reclaimed entry never both write it. A lease held by another owner
-- and not yet expired answers "busy"; otherwise the caller gets the lease and the stored record.
-- A message about a state its order has left (a re-driven dead letter, a newer attempt) is
-- "stale": acked, never sent.
-- KEYS[1] notifications hash (id -> record JSON)  KEYS[2] leases hash (id -> owner|expiry ms)
-- KEYS[2+i] order hash of the i-th message
-- ARGV[1] owner  ARGV[2] now (ms)  ARGV[3] lease ttl (ms)
-- then 3 per message: record id, the state the message carries, its attempt
-- Returns 2 values per message: "stale" | "busy" | "ok", and the stored record ("" unless ok).
local owner, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
local n = (#ARGV - 3) / 3
for i = 1, n do
  local id, state, attempt = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local verdict = "ok"
  local cur = redis.call("HMGET", KEYS[2 + i], "s", "a")
  if cur[1] and (cur[1] ~= state or (cur[2] or "1") ~= attempt) then
    verdict = "stale"
  else
    local lease = redis.call("HGET", KEYS[2], id)
    if lease then
      local sep = string.find(lease, "|", 1, true)
      local holder, expiry = string.sub(lease, 1, sep - 1), tonumber(string.sub(lease, sep + 1))
      if holder ~= owner and expiry > now then
        verdict = "busy"
      end
    end
  end
  out[#out + 1] = verdict
  if verdict == "ok" then
    redis.call("HSET", KEYS[2], id, owner .. "|" .. (now + ttl))
    out[#out + 1] = redis.call("HGET", KEYS[1], id) or ""
  else
    out[#out + 1] = ""
  end
end
return out
