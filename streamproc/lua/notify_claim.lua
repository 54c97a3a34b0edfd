-- notify_claim.lua: lease notification records to one consumer before it sends them, so two live
-- consumers handling the same reclaimed entry never both write it. A lease held by another owner
-- and not yet expired answers "busy"; otherwise the caller gets the lease and the stored record.
-- A message about a state its order has left (a re-driven dead letter, a newer attempt) is
-- "stale": acked, never sent.
-- A record that does not exist yet is stored as the caller's pending record in the same step (it
-- carries the log's size from before this call), so a first send needs no further write before
-- its line is appended.
-- KEYS[1] notifications hash (id -> record JSON)  KEYS[2] leases hash (id -> owner|expiry ms)
-- KEYS[2+i] order hash of the i-th message
-- ARGV[1] owner  ARGV[2] now (ms)  ARGV[3] lease ttl (ms)
-- then 4 per message: record id, the state the message carries, its attempt, and the pending
-- record to store when there is none yet ("" to store nothing)
-- Returns 2 values per message: "stale" | "busy" | "ok", and the stored record ("" unless ok, and
-- "" when the record did not exist before this call).
local owner, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = (#ARGV - 3) / 4

-- include: hash_batch

local ids = {}
for i = 1, n do
  ids[i] = ARGV[4 * i]
end
local leases = hmget_all(KEYS[2], ids)
local verdicts = {}
local claimed = {}
for i = 1, n do
  local b = 4 * i
  local state, attempt = ARGV[b + 1], ARGV[b + 2]
  local verdict = "ok"
  local cur = redis.call("HMGET", KEYS[2 + i], "s", "a")
  if cur[1] and (cur[1] ~= state or (cur[2] or "1") ~= attempt) then
    verdict = "stale"
  else
    local lease = leases[i]
    if lease then
      local sep = string.find(lease, "|", 1, true)
      local holder, expiry = string.sub(lease, 1, sep - 1), tonumber(string.sub(lease, sep + 1))
      if holder ~= owner and expiry > now then
        verdict = "busy"
      end
    end
  end
  verdicts[i] = verdict
  if verdict == "ok" then
    claimed[#claimed + 1] = i
  end
end
local out = {}
if #claimed > 0 then
  local claimed_ids = {}
  for j, i in ipairs(claimed) do
    claimed_ids[j] = ids[i]
  end
  local records = hmget_all(KEYS[1], claimed_ids)
  local stored = {}
  local lease_value = owner .. "|" .. (now + ttl)
  local new_leases, new_records, marked = {}, {}, {}
  for j, i in ipairs(claimed) do
    local id = ids[i]
    stored[i] = records[j] or ""
    new_leases[#new_leases + 1] = id
    new_leases[#new_leases + 1] = lease_value
    local pending = ARGV[4 * i + 3]
    if not records[j] and pending ~= "" and not marked[id] then
      marked[id] = true
      new_records[#new_records + 1] = id
      new_records[#new_records + 1] = pending
    end
  end
  hset_all(KEYS[2], new_leases)
  hset_all(KEYS[1], new_records)
  for i = 1, n do
    out[#out + 1] = verdicts[i]
    out[#out + 1] = stored[i] or ""
  end
else
  for i = 1, n do
    out[#out + 1] = verdicts[i]
    out[#out + 1] = ""
  end
end
return out
