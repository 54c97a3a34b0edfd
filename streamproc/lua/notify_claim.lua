-- notify_claim.lua: take notification records, one attempt each, so two live consumers never
-- send the same record at once. A record whose lease has not expired is "busy". A message about a
-- state its order has left (a re-driven dead letter, a newer attempt) is "stale": acked, never
-- sent. A record that does not exist yet is not written here: its first attempt only takes the
-- lease ("new"; the script is atomic, so reading the batch's leases first and writing those it
-- takes after is one step all the same), and notify_settle.lua (op create) writes
-- the record once, with its outcome. While that attempt is in flight the record is not visible,
-- and not on the schedule: its stream entry, acked only after the settlement, is what brings it
-- back if the consumer dies. The next claim then finds no record and the dead attempt's expired
-- lease ("recover"): it takes the lease and returns the dead attempt's log offset and attempt
-- count, so the caller can look for its line. An existing pending record is taken ("resume") when
-- nothing waits on it (its retry is due, or the consumer attempting it died and its lease ran
-- out); one waiting for a later retry is "scheduled" and a sent or failed one is "done". Taking an
-- existing record leases it and moves its schedule entry to the lease's expiry: if the taker dies,
-- the record is due again then.
-- KEYS[1] records hash  KEYS[2] leases hash  KEYS[3] schedule zset
-- KEYS[3+i] order hash of the i-th request (any key of this slot when its state is "")
-- ARGV[1] owner  ARGV[2] now (ms)  ARGV[3] lease (ms)  ARGV[4] customer index key prefix
-- then 5 per request: record id, the state its message carries ("" = no check), its attempt,
-- the log offset read before this call for a first attempt (-1 for email; "" = never create: a
-- missing record is "gone"), and its customer id ("" = unknown): a record that is not in the
-- hash but in its customer's set was sent at its first attempt and lives in its sent stream
-- (lib/notification.lua), so it is "done"
-- Leases: existing record: owner|expiry; first attempt: owner|expiry|log offset|attempts.
-- Returns 2 values per request: new | recover | resume | busy | scheduled | done | stale | gone,
-- and the stored record when the verdict is resume, `offset|attempts` of the dead attempt when it
-- is recover ("" otherwise).
-- include: hash_batch
-- include: notification
-- include: order
local owner, now, ttl, customer_prefix = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local n = (#ARGV - 4) / 5
local expiry = string.format("%.0f", now + ttl)
local lease_value = owner .. "|" .. expiry
local seen = {}
local out = {}
if n > 0 then
  note_pin_leases(KEYS[2])
end
-- The batch's leases as they were before it, read in one HMGET per 1,000 records: each record
-- is decided once per batch (seen), and a claim writes no record, so nothing this batch takes
-- needs reading back. The leases it takes are written after the loop in one HSET, which the AOF
-- gets as one command per batch instead of one HSETNX per record (about a microsecond of server
-- time per record).
local ids = note_ids(5, 5, n)
local held = hmget_map(KEYS[2], ids)
-- The records hash holds only records not sent at their first attempt (a few): their texts,
-- read the same way.
local records = hmget_map(KEYS[1], ids)
local taken = {} -- id, lease, id, lease, … for one HSET
local function take(id, lease)
  taken[#taken + 1] = id
  taken[#taken + 1] = lease
end
for i = 1, n do
  local b = 4 + 5 * (i - 1)
  local id, state, attempt, offset = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local customer = ARGV[b + 5]
  local verdict, stored = nil, ""
  if seen[id] then
    verdict = "done" -- a second message for one record in this batch: the first one decides
  elseif state ~= "" then
    local cur = redis.call("HMGET", KEYS[3 + i], "s", "a")
    if cur[1] and (cur[1] ~= state or order_attempt(cur[2]) ~= attempt) then
      verdict = "stale"
    end
  end
  if not verdict then
    seen[id] = true
    local record = records[id]
    if not record and customer ~= "" and redis.call("ZSCORE", customer_prefix .. customer, id) then
      verdict = "done" -- sent at its first attempt: kept in its sent stream, not the hash
    elseif not record then
      if offset == "" then
        redis.call("ZREM", KEYS[3], id)
        verdict = "gone"
      elseif not held[id] then
        take(id, lease_value .. "|" .. offset .. "|1")
        verdict = "new"
      else
        -- Only a first attempt leases a record that does not exist.
        local _, until_ms, dead_offset, dead_attempts = note_lease(held[id])
        if until_ms > now then
          verdict = "busy"
        else -- that attempt died
          take(id, lease_value .. "|" .. offset .. "|" .. (dead_attempts + 1))
          verdict, stored = "recover", dead_offset .. "|" .. dead_attempts
        end
      end
    elseif note_status(record) ~= "p" then
      -- Sent or failed: no lease outlives that settlement, so none is looked at.
      redis.call("ZREM", KEYS[3], id)
      verdict = "done"
    else
      local holder, until_ms = note_lease(held[id])
      if holder and until_ms > now then
        verdict = "busy"
      else
        local due = redis.call("ZSCORE", KEYS[3], id)
        if due and tonumber(due) > now and not holder then
          verdict = "scheduled"
        else
          verdict, stored = "resume", record
          take(id, lease_value)
          redis.call("ZADD", KEYS[3], expiry, id)
        end
      end
    end
  end
  out[#out + 1] = verdict
  out[#out + 1] = stored
end
hset_all(KEYS[2], taken)
return out
