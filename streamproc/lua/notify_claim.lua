-- notify_claim.lua: take notification records, one attempt each, so two live consumers never
-- send the same record at once. A record whose lease has not expired is "busy". A message about a
-- state its order has left (a re-driven dead letter, a newer attempt) is "stale": acked, never
-- sent. A record that does not exist yet is created pending, indexed and leased in the same step,
-- already counting this first attempt (its log offset was read before this call), so a first send
-- needs no further write. An existing pending record is taken ("resume") when nothing waits on it
-- (its retry is due, or the consumer attempting it died and its lease ran out); one waiting for a
-- later retry is "scheduled" and a sent or failed one is "done". Taking a record leases it and
-- moves its schedule entry to the lease's expiry: if the taker dies, the record is due again then.
-- KEYS[1] records hash  KEYS[2] leases hash (id -> owner|expiry ms)  KEYS[3] schedule zset
-- KEYS[4] score clock (last creation score handed out)
-- KEYS[4+i] order hash of the i-th request (any key of this slot when its state is "")
-- ARGV[1] owner  ARGV[2] now (ms)  ARGV[3] lease (ms)  ARGV[4] index key prefix
-- ARGV[5] customer index key prefix
-- then 4 per request: record id, the state its message carries ("" = no check), its attempt, and
-- the record to create when there is none ("" = create nothing)
-- Returns 2 values per request: new | resume | busy | scheduled | done | stale | gone, and the
-- stored record when the verdict is resume ("" otherwise).
-- include: notification
local owner, now, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ix_prefix, customer_prefix = ARGV[4], ARGV[5]
local n = (#ARGV - 5) / 4
local expiry = string.format("%.0f", now + ttl)
local lease_value = owner .. "|" .. expiry
-- Creation scores: ms x 1000, above the last one handed out, so each is unique and a page's
-- cursor (a score) is exact.
local clock = tonumber(redis.call("GET", KEYS[4]) or "0")
local clock_before = clock
local seen = {}
local out = {}
for i = 1, n do
  local b = 5 + 4 * (i - 1)
  local id, state, attempt, create = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local verdict, stored = nil, ""
  if seen[id] then
    verdict = "done" -- a second message for one record in this batch: the first one decides
  elseif state ~= "" then
    local cur = redis.call("HMGET", KEYS[4 + i], "s", "a")
    if cur[1] and (cur[1] ~= state or (cur[2] or "1") ~= attempt) then
      verdict = "stale"
    end
  end
  if not verdict then
    seen[id] = true
    local holder, until_ms = note_lease(redis.call("HGET", KEYS[2], id))
    if holder and until_ms > now then
      verdict = "busy"
    else
      local record = redis.call("HGET", KEYS[1], id)
      if not record then
        if create == "" then
          redis.call("ZREM", KEYS[3], id)
          verdict = "gone"
        else
          clock = math.max(now * 1000, clock + 1)
          local score = string.format("%.0f", clock)
          redis.call("HSET", KEYS[1], id, create)
          redis.call("ZADD", note_index(ix_prefix, id, "p"), score, id)
          redis.call("ZADD", customer_prefix .. note_customer(create), score, id)
          verdict = "new"
        end
      elseif note_status(record) ~= "p" then
        redis.call("ZREM", KEYS[3], id)
        verdict = "done"
      else
        local due = redis.call("ZSCORE", KEYS[3], id)
        if due and tonumber(due) > now and not holder then
          verdict = "scheduled"
        else
          verdict, stored = "resume", record
        end
      end
      if verdict == "new" or verdict == "resume" then
        redis.call("HSET", KEYS[2], id, lease_value)
        redis.call("ZADD", KEYS[3], expiry, id)
      end
    end
  end
  out[#out + 1] = verdict
  out[#out + 1] = stored
end
if clock ~= clock_before then
  redis.call("SET", KEYS[4], string.format("%.0f", clock))
end
return out
