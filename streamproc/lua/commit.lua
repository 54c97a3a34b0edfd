-- commit.lua: for a batch of messages of one stage, apply each order's state transition, enqueue
-- the order for its next stage(s) and XACK the message -- one atomic step per batch.
-- A transition is applied only while the order still waits for this stage in this attempt
-- (field k = stage, field a = attempt): a replayed or stale message is just acked (fencing).
-- An item with an empty to_state is ack-only (stages with no state change, e.g. notify).
-- KEYS[1] source stream   KEYS[2] state counts   KEYS[3], KEYS[4] output streams 1 and 2
-- KEYS[5] today's counters hash (terminal states, and revenue per currency of completed orders)
-- KEYS[5+i] order hash of the i-th item
-- ARGV[1] group   ARGV[2] stage   ARGV[3] now (ms)   ARGV[4] count n
-- then 8 per item: msg id, order id, attempt, to_state, next stage ("" when terminal),
--                  outputs ("", "1", "2" or "12"), note (stored in field p when not ""),
--                  revenue ("<currency>:<cents>" for a completion, else "")
-- Returns one integer per item: 1 applied, 0 stale (acked only), -1 order missing (not acked).
local group, stage, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local terminal = { completed = true, failed = true, rolled_back = true }
local out = {}
local counted = false
for i = 1, n do
  local b = 4 + (i - 1) * 8
  local msg, oid, attempt, to_state = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3], ARGV[b + 4]
  local next_stage, outputs, note, revenue = ARGV[b + 5], ARGV[b + 6], ARGV[b + 7], ARGV[b + 8]
  local key = KEYS[5 + i]
  if to_state == "" then
    redis.call("XACK", KEYS[1], group, msg)
    out[i] = 1
  else
    local cur = redis.call("HMGET", key, "s", "a", "k", "d", "h")
    if not cur[1] then
      out[i] = -1
    else
      if cur[3] == stage and cur[2] == attempt then
        redis.call("HSET", key, "s", to_state, "k", next_stage, "u", now,
          "h", (cur[5] or "") .. ";" .. to_state .. "@" .. now)
        if note ~= "" then
          redis.call("HSET", key, "p", note)
        end
        if cur[1] ~= to_state then
          redis.call("HINCRBY", KEYS[2], cur[1], -1)
          redis.call("HINCRBY", KEYS[2], to_state, 1)
        end
        if terminal[to_state] then
          redis.call("HINCRBY", KEYS[5], to_state, 1)
          if revenue ~= "" then
            local sep = string.find(revenue, ":", 1, true)
            -- pcall: an absurd total overflowing the day's 64-bit sum must not abort the batch
            -- half-way (a script error keeps the writes made before it).
            redis.pcall("HINCRBY", KEYS[5], "revenue:" .. string.sub(revenue, 1, sep - 1),
              string.sub(revenue, sep + 1))
          end
          counted = true
        end
        for j = 1, #outputs do
          local target = KEYS[2 + tonumber(string.sub(outputs, j, j))]
          redis.call("XADD", target, "*", "o", oid, "a", attempt, "s", to_state, "d", cur[4])
        end
        out[i] = 1
      else
        out[i] = 0
      end
      redis.call("XACK", KEYS[1], group, msg)
    end
  end
end
if counted then
  redis.call("EXPIRE", KEYS[5], 691200, "NX")
end
return out
