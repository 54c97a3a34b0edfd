-- buckets.lua (included after hash_batch, not a script): per-order records kept in bucket hashes.
-- Reservation records and gateway results live in small hashes (streamproc.keys.record_bucket)
-- that Redis keeps as compact listpacks, instead of one hash of every order. A script gets the
-- buckets of its batch as KEYS, and per item the KEYS index of its bucket: the index of the old
-- single hash (`legacy`) for items whose entry predates buckets. Records written before buckets
-- stay in that old hash, so a record missing from its bucket is looked up there too; a bucket's
-- record, written later, is read first.

-- The stored value of fields[i] (false when none) in the hash KEYS[slots[i]], or in KEYS[legacy].
-- One HMGET per bucket of the batch, and one for the old hash when it exists and was missed.
local function bucket_get(legacy, fields, slots)
  local out, groups, seen = {}, {}, {}
  for i = 1, #fields do
    local s = slots[i]
    local g = groups[s]
    if not g then
      g = { {}, {} }
      groups[s] = g
      seen[#seen + 1] = s
    end
    g[1][#g[1] + 1] = fields[i]
    g[2][#g[2] + 1] = i
  end
  local missed = {}
  for _, s in ipairs(seen) do
    local g = groups[s]
    local values = hmget_all(KEYS[s], g[1])
    for j = 1, #g[1] do
      local i = g[2][j]
      out[i] = values[j]
      if not values[j] and s ~= legacy then
        missed[#missed + 1] = i
      end
    end
  end
  if #missed > 0 and redis.call("EXISTS", KEYS[legacy]) == 1 then
    local names = {}
    for j, i in ipairs(missed) do
      names[j] = fields[i]
    end
    local values = hmget_all(KEYS[legacy], names)
    for j, i in ipairs(missed) do
      out[i] = values[j]
    end
  end
  return out
end

-- Field/value pairs collected per bucket (bucket_put); bucket_write makes one HSET per bucket, in
-- first-use order.
local function bucket_writes()
  return { by_slot = {}, slots = {} }
end

local function bucket_put(writes, slot, field, value)
  local pairs_of = writes.by_slot[slot]
  if not pairs_of then
    pairs_of = {}
    writes.by_slot[slot] = pairs_of
    writes.slots[#writes.slots + 1] = slot
  end
  pairs_of[#pairs_of + 1] = field
  pairs_of[#pairs_of + 1] = value
end

local function bucket_write(writes)
  for _, slot in ipairs(writes.slots) do
    hset_all(KEYS[slot], writes.by_slot[slot])
  end
end
