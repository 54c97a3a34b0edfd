-- notification.lua (included, not a script): read the parts of a notification record the scripts
-- need, and name its index sets. A record is the text `status|customer|…` (streamproc/
-- notifications.py), its id `<order>:<type>:<channel>`; status codes p, s, f.
local NOTE_STATUS = { p = "pending", s = "sent", f = "failed" }

local function note_status(record)
  return string.sub(record, 1, 1)
end

local function note_customer(record)
  return string.match(record, "^%a|(%d+)|")
end

-- The index set holding record `id` while its status is `code` (prefix .. type:channel:status).
local function note_index(prefix, id, code)
  local kind, channel = string.match(id, ":(%a+):(%a+)$")
  return prefix .. kind .. ":" .. channel .. ":" .. NOTE_STATUS[code]
end

-- Records sent at their first attempt (nearly all) are kept in a stream per type and channel
-- instead of the records hash and the sent set: created in score order (the clock only grows),
-- they are appended with their score as the entry id (`<ms>-<tie-breaker>`) and never change
-- again, so an entry (~70 bytes with the text) stands in for a hash field and a sorted-set member
-- (~245). Entries hold the order id (field i) and the record's text (field r); the stream's name
-- holds the type and channel. Sizes per UTC day of creation, for totals over dates, are kept in
-- the days hash (`<type>:<channel>:<epoch day>` -> entries). Records that reach sent later stay
-- in the hash and the sent set, so a listing merges both. Every record is in its customer's set
-- with its score: that is how a streamed record is found by id.
-- The leases hash holds the attempts in flight: a few hundred at once, each added and removed
-- within milliseconds, and empty (so deleted) between bursts. Below the server's listpack limits
-- (512 entries by default) Redis keeps such a hash as one compact list that every lookup,
-- insert and delete scans from the start: 2.7 us of server time per HSETNX of a claim against 0.4
-- for a hash of the other kind. A field holding a value longer than hash-max-listpack-value
-- (512 in deploy/redis.conf; 64 by default) turns the hash into a hashtable, which Redis never
-- turns back while the hash exists; the pin is that field, written once and never removed, so the
-- hash never empties either. Record ids (`<order>:<type>:<channel>`) never equal it, and what
-- lists the leases skips it (notify_expire.lua).
local NOTE_LEASES_PIN = "~"

local function note_pin_leases(leases)
  if redis.call("HEXISTS", leases, NOTE_LEASES_PIN) == 0 then
    redis.call("HSET", leases, NOTE_LEASES_PIN,
      "keeps this hash a hashtable (lib/notification.lua)" .. string.rep(" ", 4096))
  end
end

local NOTE_DAY_MS = 86400000
local NOTE_DAY_SCORE = 1000 * NOTE_DAY_MS -- the scores of one UTC day

-- A record id's type and channel, "<type>:<channel>" (the id is `<order>:<type>:<channel>`).
local function note_pair(id)
  return string.match(id, "%a+:%a+$")
end

-- The sent stream of the records of type and channel `pair` ("<type>:<channel>").
local function note_sent_stream(prefix, pair)
  return prefix .. pair .. ":sent:stream"
end

-- The type and channel of a sent stream, from its name.
local function note_stream_kind(key)
  return string.match(key, ":(%a+):(%a+):sent:stream$")
end

-- A score's entry id, and back: score = ms x 1000 + tie-breaker (below 2^53, exact in Lua).
local function note_entry_id(score)
  local n = tonumber(score)
  local ms = math.floor(n / 1000)
  return string.format("%.0f-%d", ms, n - ms * 1000)
end

-- The exclusive stream range bound just below score `score`, or nil when no entry id can be
-- below it (a score of 0 or less: "(0-0" is no id Redis takes).
local function note_below(score)
  if tonumber(score) <= 0 then
    return nil
  end
  return "(" .. note_entry_id(score)
end

-- The score of a sent stream's entry, as a string: "<ms>-<tie-breaker below 1000>" ->
-- "<ms><3 digits>". String cuts cost a quarter of parsing and formatting the numbers, which a
-- page does for every entry it reads; Lua takes the string in arithmetic as the number.
local function note_entry_score(entry_id)
  local dash = string.find(entry_id, "-", 1, true)
  local seq = string.sub("00" .. string.sub(entry_id, dash + 1), -3)
  return string.sub(entry_id, 1, dash - 1) .. seq
end

-- The days hash field of a sent stream's entry: its type and channel `pair`, and the UTC day.
local function note_day_field(pair, score)
  return pair .. ":" .. math.floor(score / NOTE_DAY_SCORE) -- an integer below 1e14: as %d
end

-- An entry's field `name` (nil when it has none).
local function note_field(entry, name)
  local fields = entry[2]
  for k = 1, #fields, 2 do
    if fields[k] == name then
      return fields[k + 1]
    end
  end
  return nil
end

-- The text of record `id` kept in its sent stream (found by its score), or nil.
local function note_streamed(prefix, id, score)
  local entry_id = note_entry_id(score)
  local got = redis.call("XRANGE", note_sent_stream(prefix, note_pair(id)), entry_id, entry_id)
  return got[1] and note_field(got[1], "r")
end

-- Move record `id` from the index of status `from` to that of `to`, keeping its score.
local function note_move(prefix, id, from, to)
  local old = note_index(prefix, id, from)
  local score = redis.call("ZSCORE", old, id)
  if score then
    redis.call("ZREM", old, id)
    redis.call("ZADD", note_index(prefix, id, to), score, id)
  end
end

-- The record ids of a batch's items: ARGV[first], then every `stride` arguments, n of them.
local function note_ids(first, stride, n)
  local ids = {}
  for i = 1, n do
    ids[i] = ARGV[first + stride * (i - 1)]
  end
  return ids
end

-- The lease's holder alone (nil without a lease), without converting the figures after it.
local function note_holder(value)
  return value and string.match(value, "^(.-)|") or nil
end

-- The lease's holder, expiry (ms), and for a first attempt (no record yet) the log offset read
-- before it (-1: none, or email) and its attempt count, from `owner|expiry[|offset|attempts]`;
-- nil, 0, -1, 0 without a lease. A lease on an existing record carries only `owner|expiry`: the
-- record holds its offset and attempts.
local function note_lease(value)
  if not value then
    return nil, 0, -1, 0
  end
  local holder, expiry, offset, attempts = string.match(value, "^(.-)|(%d+)|?(-?%d*)|?(%d*)$")
  return holder, tonumber(expiry), tonumber(offset) or -1, tonumber(attempts) or 1
end
