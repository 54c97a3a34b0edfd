-- notify_list.lua: one page of notification records, newest first, merged from time-ordered index
-- sets (each score is a unique creation score, so a page's cursor is just the last score shown).
-- Without a customer the caller passes only the sets of the wanted types, channels and statuses:
-- nothing is left to filter, each set is read from the cursor on, and the total is a ZCOUNT per
-- set. With a customer it passes that customer's set and the filters are applied here (type and
-- channel from the id, status from the record), so the work is bounded by that customer's records.
-- KEYS[1] records hash  KEYS[2] schedule zset  KEYS[3] sent streams' days hash
-- KEYS[4..] index sets (and sent streams, lib/notification.lua) to merge
-- ARGV[1] upper score bound of this page ("(<cursor>" after a cursor)  ARGV[2] lower bound
-- ARGV[3] page size  ARGV[4] type ("" = any)  ARGV[5] channel ("" = any)
-- ARGV[6] status code p|s|f ("" = any)  ARGV[7] upper bound of the whole listing (for the total)
-- ARGV[8] index key prefix (the sent streams' names)
-- Returns {next cursor ("" after the last page), total, then 4 per record: id, score, record,
-- due ms ("" unless pending)}.
-- include: notification
local lo, limit = ARGV[2], tonumber(ARGV[3])
local want_kind, want_channel, want_status = ARGV[4], ARGV[5], ARGV[6]
local filtered = want_kind ~= "" or want_channel ~= "" or want_status ~= ""
local chunk = limit + 1
local ix_prefix = ARGV[8]
local streamed = {} -- record id -> text, for the records read from sent streams' entries

-- The record of `id` (scored `score`) when it passes the filters, else nil. A record in neither
-- a stream chunk nor the hash was sent at its first attempt and is read from its sent stream.
local function accept(id, score)
  if want_kind ~= "" or want_channel ~= "" then
    local kind, channel = string.match(id, ":(%a+):(%a+)$")
    if (want_kind ~= "" and kind ~= want_kind) or (want_channel ~= "" and channel ~= want_channel) then
      return nil
    end
  end
  local record = streamed[id] or redis.call("HGET", KEYS[1], id) or
    note_streamed(ix_prefix, id, score)
  if not record or (want_status ~= "" and note_status(record) ~= want_status) then
    return nil
  end
  return record
end

-- A score bound ("-inf", "+inf", "<score>", "(<score>") as a stream range bound; nil when the
-- range is empty (an exclusive bound that no entry id is below).
local function entry_bound(bound, open_end)
  if bound == "-inf" or bound == "+inf" then
    return open_end
  end
  if string.sub(bound, 1, 1) == "(" then
    return note_below(string.sub(bound, 2))
  end
  return note_entry_id(bound)
end

-- A chunk of a sent stream, newest first below `hi`, as ZRANGE WITHSCORES gives a set's: id, score.
local function stream_chunk(s, hi, count)
  local upper = entry_bound(hi, "+")
  if not upper then
    return {}
  end
  local got = redis.call("XREVRANGE", s.key, upper, entry_bound(lo, "-"), "COUNT", count)
  local flat = {}
  for j, entry in ipairs(got) do
    local record_id = note_field(entry, "i") .. s.suffix
    flat[2 * j - 1] = record_id
    flat[2 * j] = note_entry_score(entry[1])
    streamed[record_id] = note_field(entry, "r")
  end
  return flat
end

-- Each set (or sent stream) is read a chunk at a time, newest first, below the last score it
-- returned.
local sets = {}
for k = 4, #KEYS do
  local kind, channel = note_stream_kind(KEYS[k])
  sets[#sets + 1] = { key = KEYS[k], hi = ARGV[1], buf = {}, pos = 1, last = false,
    suffix = kind and (":" .. kind .. ":" .. channel) }
end
local function head(s)
  if s.pos > #s.buf then
    if s.last then
      return nil
    end
    local got
    if s.suffix then
      got = stream_chunk(s, s.hi, chunk)
    else
      got = redis.call("ZRANGE", s.key, s.hi, lo, "BYSCORE", "REV", "LIMIT", 0, chunk, "WITHSCORES")
    end
    s.buf, s.pos, s.last = got, 1, #got < 2 * chunk
    if #got == 0 then
      return nil
    end
    s.hi = "(" .. got[#got]
  end
  return s.buf[s.pos], s.buf[s.pos + 1]
end

-- The day number of a score that starts a UTC day (an infinite bound stays), else nil.
local function whole_days(score)
  if score == math.huge or score == -math.huge then
    return score
  end
  if score and score % NOTE_DAY_SCORE == 0 then
    return score / NOTE_DAY_SCORE
  end
  return nil
end

local days -- the days hash, once a total needs it

-- How many entries of a sent stream are scored in [lo, top): its length when unbounded, the days
-- hash's counts when both bounds are day starts (the API's dates), else counted a chunk at a time.
local function stream_count(s, top)
  if lo == "-inf" and top == "+inf" then
    return redis.call("XLEN", s.key)
  end
  -- Day starts: lo inclusive (or none), top exclusive (or none), as the API passes dates.
  local from = whole_days(lo == "-inf" and -math.huge or tonumber(lo))
  local to = whole_days(top == "+inf" and math.huge or
    (string.sub(top, 1, 1) == "(" and tonumber(string.sub(top, 2)) or nil))
  if from and to then
    local prefix = string.sub(s.suffix, 2) .. ":"
    days = days or redis.call("HGETALL", KEYS[3]) -- read once for every stream of the listing
    local total = 0
    for i = 1, #days, 2 do
      if string.sub(days[i], 1, #prefix) == prefix then
        local day = tonumber(string.sub(days[i], #prefix + 1))
        if day and day >= from and day < to then
          total = total + tonumber(days[i + 1])
        end
      end
    end
    return total
  end
  local total, upper = 0, top
  while true do
    local got = stream_chunk(s, upper, 500)
    total = total + #got / 2
    if #got < 1000 then
      return total
    end
    upper = "(" .. got[#got]
  end
end

local items, count, next_cursor = {}, 0, ""
while true do
  local best, best_id, best_score
  for _, s in ipairs(sets) do
    local id, score = head(s)
    if id and (not best or tonumber(score) > tonumber(best_score)) then
      best, best_id, best_score = s, id, score
    end
  end
  if not best then
    break
  end
  best.pos = best.pos + 2
  local record = accept(best_id, best_score)
  if record then
    if count == limit then
      next_cursor = items[#items - 2] -- the score of the last record on this page
      break
    end
    count = count + 1
    local due = note_status(record) == "p" and redis.call("ZSCORE", KEYS[2], best_id) or ""
    items[#items + 1] = best_id
    items[#items + 1] = best_score
    items[#items + 1] = record
    items[#items + 1] = due or ""
  end
end

local total = 0
for k = 4, #KEYS do
  if sets[k - 3].suffix then
    total = total + stream_count(sets[k - 3], ARGV[7])
  elseif not filtered then
    total = total + redis.call("ZCOUNT", KEYS[k], lo, ARGV[7])
  else
    local upper = ARGV[7]
    while true do
      local got = redis.call("ZRANGE", KEYS[k], upper, lo, "BYSCORE", "REV", "LIMIT", 0, 500,
        "WITHSCORES")
      for j = 1, #got, 2 do
        if accept(got[j], got[j + 1]) then
          total = total + 1
        end
      end
      if #got < 1000 then
        break
      end
      upper = "(" .. got[#got]
    end
  end
end

local out = { next_cursor, total }
for _, value in ipairs(items) do
  out[#out + 1] = value
end
return out
