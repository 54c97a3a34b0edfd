-- notify_expire.lua: drop notification records created before a cutoff, with every index entry,
-- schedule entry and lease they have, so memory stays bounded (retention). At most ARGV[2]
-- records per call; the caller repeats until a call drops fewer. A lease on a record that does not
-- exist belongs to a first attempt in flight (notify_claim.lua), left alone; or, once it expired
-- before the cutoff, to one that died and whose entry never came back (it was stale, or was
-- dead-lettered): that one is dropped, by the call that drops fewer than ARGV[2] records (the
-- caller's last). Leases are only the attempts in flight, so few.
-- KEYS[1] records hash  KEYS[2] leases hash  KEYS[3] schedule zset  KEYS[4] sent streams' days
-- hash  KEYS[5..] the index sets and sent streams (lib/notification.lua)
-- ARGV[1] cutoff score (records scored below it go)  ARGV[2] most records to drop
-- ARGV[3] customer index key prefix
-- Returns the number of records dropped.
-- include: notification
-- include: tally
local cutoff, budget, customer_prefix = "(" .. ARGV[1], tonumber(ARGV[2]), ARGV[3]
local dropped = 0

-- Record `id` and everything else it has, but its index entry (`record`: its text when it is
-- kept in a sent stream's entry, not the hash).
local function drop(id, record)
  record = record or redis.call("HGET", KEYS[1], id)
  local customer = record and note_customer(record)
  if customer then
    redis.call("ZREM", customer_prefix .. customer, id)
  end
  redis.call("HDEL", KEYS[1], id)
  redis.call("HDEL", KEYS[2], id)
  redis.call("ZREM", KEYS[3], id)
end

-- The oldest entries of a sent stream, with their records and their days' counts.
local function drop_entries(key, kind, channel, most)
  local below = note_below(ARGV[1])
  if not below then
    return 0
  end
  local got = redis.call("XRANGE", key, "-", below, "COUNT", most)
  if #got == 0 then
    return 0
  end
  local pair, entries, days, day_fields = kind .. ":" .. channel, {}, {}, {}
  for j, entry in ipairs(got) do
    drop(note_field(entry, "i") .. ":" .. pair, note_field(entry, "r"))
    entries[j] = entry[1]
    tally(days, day_fields, note_day_field(pair, note_entry_score(entry[1])), 1)
  end
  redis.call("XDEL", key, unpack(entries))
  if redis.call("XLEN", key) == 0 then
    redis.call("DEL", key) -- an empty stream is kept by Redis; nothing is left to index
  end
  for _, field in ipairs(day_fields) do
    if redis.call("HINCRBY", KEYS[4], field, -days[field]) <= 0 then
      redis.call("HDEL", KEYS[4], field)
    end
  end
  return #got
end

for k = 5, #KEYS do
  if dropped >= budget then
    break
  end
  local kind, channel = note_stream_kind(KEYS[k])
  if kind then
    dropped = dropped + drop_entries(KEYS[k], kind, channel, budget - dropped)
  else
    local ids = redis.call("ZRANGE", KEYS[k], "-inf", cutoff, "BYSCORE", "LIMIT", 0,
      budget - dropped)
    for _, id in ipairs(ids) do
      drop(id)
      redis.call("ZREM", KEYS[k], id)
    end
    dropped = dropped + #ids
  end
end
if dropped < budget then -- the caller's last call
  local cutoff_ms = tonumber(ARGV[1]) / 1000
  local leases = redis.call("HGETALL", KEYS[2])
  for i = 1, #leases, 2 do
    if leases[i] ~= NOTE_LEASES_PIN then
      local _, until_ms = note_lease(leases[i + 1])
      if until_ms < cutoff_ms and redis.call("HEXISTS", KEYS[1], leases[i]) == 0 then
        redis.call("HDEL", KEYS[2], leases[i])
      end
    end
  end
end
return dropped
