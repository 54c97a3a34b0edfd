-- notify_settle.lua: record what an attempt did, for records the caller still leases. One step per
-- batch keeps a record, its index (status), its customer set, its schedule entry and its lease in
-- agreement:
--   create  a first attempt (notify_claim.lua said new or recover): store the record once, with
--           its outcome (sent, failed, or pending with a retry due), in the records hash and the
--           index of that status, or when sent in its sent stream's entry (lib/notification.lua),
--           and in its customer's set, scored by its creation; due on the schedule when pending;
--           lease released. Refused when a record exists already.
--   begin   store the record (attempts + 1, the log's offset) before a retried send
--   sent    store it sent; pending -> sent index; off the schedule; lease released
--   retry   store it (error, attempts) still pending; due again at the given time; lease released
--   failed  store it failed; pending -> failed index; off the schedule; lease released
-- A record that is no longer pending, or whose lease another consumer took (this one was too
-- slow and the record was attempted again), is left alone: that attempt's outcome stands.
-- KEYS[1] records hash  KEYS[2] leases hash  KEYS[3] schedule zset
-- KEYS[4] score clock (last creation score handed out)  KEYS[5] sent streams' days hash
-- ARGV[1] owner  ARGV[2] index key prefix  ARGV[3] customer index key prefix
-- then 5 per item: record id, op (create | begin | sent | retry | failed), the record to store,
-- due (ms; retry, and create of a pending record), created (ms; create only)
-- Returns one integer per item: 1 applied, 0 left alone.
-- include: hash_batch
-- include: ms
-- include: notification
-- include: tally
local owner, ix_prefix, customer_prefix = ARGV[1], ARGV[2], ARGV[3]
local n = (#ARGV - 3) / 5
local TO = { sent = "s", failed = "f" }
local clock, clock_before = nil, nil
local out = {}
local days, day_fields = {}, {} -- the days hash's increments, written once after the batch

-- Per "<type>:<channel>": { its sent stream, the first score of the UTC day last counted, that
-- day's field in the days hash }. Scores only grow, so a batch crosses a day at most once or
-- twice: the day field is built then, not formatted and hashed again for every record.
local streams = {}

-- Append a record sent at its first attempt, with its text, to its sent stream; false when the
-- stream refuses the id (its last entry is not older: the clock key was lost), and then the
-- records hash and the sent set take it.
local function sent_stream(id, score, record)
  local pair = note_pair(id)
  local s = streams[pair]
  if not s then
    s = { note_sent_stream(ix_prefix, pair), -1, "" }
    streams[pair] = s
  end
  local added = redis.pcall("XADD", s[1], note_entry_id(score), "i",
    string.sub(id, 1, #id - #pair - 1), "r", record)
  if type(added) == "table" and added.err then
    return false
  end
  if score < s[2] or score >= s[2] + NOTE_DAY_SCORE then
    s[2], s[3] = math.floor(score / NOTE_DAY_SCORE) * NOTE_DAY_SCORE, note_day_field(pair, score)
  end
  tally(days, day_fields, s[3], 1)
  return true
end

-- The batch's leases, read in one HMGET per 1,000 records; those released are deleted after the
-- loop in one HDEL, which the AOF gets as one command per batch instead of one per record. A
-- record settled twice in one batch sees its lease gone after the first release, as before. Should
-- the batch fail half-way, the leases it released stay until they expire, which only delays a
-- retry of the records settled before the failure: a settled record's lease is not read again.
local held = hmget_map(KEYS[2], note_ids(4, 5, n))
local released = {}
local function release(id)
  released[#released + 1] = id
  held[id] = false
end

for i = 1, n do
  local b = 3 + 5 * (i - 1)
  local id, op, record, due, created = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4], ARGV[b + 5]
  local holder = note_holder(held[id])
  if holder ~= owner then
    out[i] = 0
  elseif op == "create" then
    -- Another of this owner's batches (one owner per process) may have created the record
    -- meanwhile, and may hold the lease again for a retry: then nothing here is touched. Every
    -- record is in its customer's set, wherever it is stored, so that set tells; HSETNX checks
    -- the hash too for one that goes there, in the command that writes it.
    local customer_key = customer_prefix .. note_customer(record)
    local status = note_status(record)
    if redis.call("ZSCORE", customer_key, id) or
        (status ~= "s" and redis.call("HSETNX", KEYS[1], id, record) == 0) then
      out[i] = 0
    else
      -- Creation scores: ms x 1000, above the last one handed out, so each is unique, scores
      -- grow in the order records appear, and a page's cursor (a score) is exact.
      if not clock then
        clock = tonumber(redis.call("GET", KEYS[4]) or "0")
        clock_before = clock
      end
      clock = math.max(ms_number(created) * 1000, clock + 1)
      local score = string.format("%.0f", clock)
      if status ~= "s" then
        redis.call("ZADD", note_index(ix_prefix, id, status), score, id)
      elseif not sent_stream(id, clock, record) then
        redis.call("HSET", KEYS[1], id, record)
        redis.call("ZADD", note_index(ix_prefix, id, status), score, id)
      end
      redis.call("ZADD", customer_key, score, id)
      if status == "p" then
        redis.call("ZADD", KEYS[3], due, id)
      end
      release(id)
      out[i] = 1
    end
  else
    local current = redis.call("HGET", KEYS[1], id)
    if not current or note_status(current) ~= "p" then
      out[i] = 0
    else
      redis.call("HSET", KEYS[1], id, record)
      if op == "retry" then
        redis.call("ZADD", KEYS[3], due, id)
        release(id)
      elseif op ~= "begin" then
        note_move(ix_prefix, id, "p", TO[op])
        redis.call("ZREM", KEYS[3], id)
        release(id)
      end
      out[i] = 1
    end
  end
end
hdel_all(KEYS[2], released)
for _, field in ipairs(day_fields) do
  redis.call("HINCRBY", KEYS[5], field, days[field])
end
if clock and clock ~= clock_before then
  redis.call("SET", KEYS[4], string.format("%.0f", clock))
end
return out
