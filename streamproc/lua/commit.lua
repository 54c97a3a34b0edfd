-- commit.lua: for a batch of messages of one stage, apply each order's state transition, enqueue
-- the order for its next stage(s) and XACK the message -- one atomic step per batch.
-- A transition is applied only while the order still waits for this stage in this attempt
-- (field k = stage, field a = attempt): a replayed or stale message is just acked (fencing).
-- An item with an empty to_state is ack-only (stages with no state change, e.g. notify).
-- A completion is added to the leaderboards in the same step, so they count each order exactly
-- once; while a rebuild runs (its marker key exists) it is added to the staging boards as well.
-- The completions are summed per customer and per SKU in Lua and written once per batch
-- (lib/leaderboard.lua): per currency one ZMSCORE, ZADD, HMGET and HSET for the customers and the
-- same for the products, and one SADD of the currencies -- per batch, not per order.
-- A terminal order's entries carry r=1 when the order reached a terminal state before (it was
-- re-submitted or its dead letter retried), so the analytics keep only its latest outcome.
-- Per order it costs one HMGET, one HSET and one XADD per output; the leaderboards, the acks, the
-- state counters and the day's counters are written once per batch. Should a call fail half-way,
-- everything decided before the failure is still acked, counted and added to the leaderboards
-- before the error is returned, so a retry finds those messages stale and every figure right.
-- KEYS[1] source stream   KEYS[2] state counts   KEYS[3 .. 2+m] output streams 1..m
-- KEYS[3+m] today's counters hash (terminal states, and revenue per currency of completed orders)
-- KEYS[4+m] this second's throughput counter   KEYS[5+m] leaderboard rebuild marker
-- KEYS[5+m+i] order hash of the i-th item
-- ARGV[1] group   ARGV[2] stage   ARGV[3] now (ms)   ARGV[4] count n   ARGV[5] outputs m
-- ARGV[6] leaderboard key prefix   ARGV[7] staging leaderboard key prefix
-- ARGV[8] number of transitions t, then 3 per transition: to_state, next stage ("" when
--         terminal), outputs ("", or digits 1..m)
-- then 6 per item: msg id, order id, attempt, transition (1..t), note (stored in field p when
--                  not ""), revenue ("<currency>:<cents>" for a completion, else "")
-- Returns one integer per item: 1 applied, 0 stale (acked only), -1 order missing (not acked);
-- then, for each applied item whose new state is terminal (in item order), the ms since its order
-- was submitted (-1 when unknown): the end-to-end latency, at the cost of one more HMGET field.
-- include: ms
-- include: leaderboard
-- include: tally
-- include: submitted
-- include: order
local group, stage, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now_ms = tonumber(now)
local m, lb_live, lb_staging = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local K_DAY, K_TPUT, K_REBUILD, K_ORDERS = 3 + m, 4 + m, 5 + m, 5 + m
-- Keyed by the items' argument itself ("1", "2", ...), with each output's stream key looked up
-- here once: per item, a table lookup instead of a string-to-number conversion per field.
local transitions, t_count = {}, tonumber(ARGV[8])
for t = 1, t_count do
  local outputs, streams = ARGV[8 + 3 * t], {}
  for j = 1, #outputs do
    streams[j] = KEYS[2 + tonumber(string.sub(outputs, j, j))]
  end
  transitions[tostring(t)] = { ARGV[6 + 3 * t], ARGV[7 + 3 * t], streams }
end
local first = 8 + 3 * t_count
local rebuilding -- looked up at the first completion
local live, staging -- the completions' leaderboard sums, written once after the batch
local terminals = 0
local terminal = { completed = true, failed = true, rolled_back = true }
-- Revenue is summed per currency in Lua numbers while they stay exact (below 2^53 cents).
local EXACT = 9007199254740992
local out = {}
local latencies = {}
local acks = {}
local moves, moved = {}, {}
local day, day_fields = {}, {}

local function apply()
  for i = 1, n do
    local b = first + (i - 1) * 6
    local msg, attempt = ARGV[b + 1], ARGV[b + 3]
    local transition = transitions[ARGV[b + 4]]
    local to_state = transition[1]
    if to_state == "" then
      acks[#acks + 1] = msg
      out[i] = 1
    else
      local key = KEYS[K_ORDERS + i]
      local cur = redis.call("HMGET", key, "s", "a", "k", "d", "h", "c")
      if not cur[1] then
        out[i] = -1
      else
        if order_awaits(cur[3], cur[2], stage, attempt) then
          local figures
          -- A completion's payload is decoded first: decoding is what can fail, and then the
          -- order must stay as it was.
          if to_state == "completed" then
            if rebuilding == nil then
              rebuilding = redis.call("EXISTS", KEYS[K_REBUILD]) == 1
              live = lb_batch(lb_live, lb_live .. "currencies")
              staging = lb_batch(lb_staging, lb_staging .. "currencies")
            end
            figures = lb_decode_order(cur[4])
          end
          local note = ARGV[b + 5]
          local history = order_advance(cur[5], cur[6], to_state, now_ms)
          if note ~= "" then
            redis.call("HSET", key, "s", to_state, "k", transition[2], "h", history, "p", note)
          else
            redis.call("HSET", key, "s", to_state, "k", transition[2], "h", history)
          end
          -- Counted once its state moved (the sums cannot fail), written after the batch.
          if figures then
            lb_add_order(live, figures)
            if rebuilding then
              lb_add_order(staging, figures)
            end
          end
          local outputs = transition[3]
          local prior = terminal[to_state] and (attempt ~= "1" or order_was_dead_lettered(cur[5]))
          for j = 1, #outputs do
            local target = outputs[j]
            if prior then
              redis.call("XADD", target, "*", "o", ARGV[b + 2], "a", attempt, "s", to_state,
                "d", cur[4], "c", cur[6] or "0", "r", "1")
            else
              redis.call("XADD", target, "*", "o", ARGV[b + 2], "a", attempt, "s", to_state,
                "d", cur[4], "c", cur[6] or "0")
            end
          end
          if cur[1] ~= to_state then
            tally(moves, moved, cur[1], -1)
            tally(moves, moved, to_state, 1)
          end
          if terminal[to_state] then
            terminals = terminals + 1
            latencies[#latencies + 1] = elapsed_ms(now_ms, cur[6], cur[5], attempt)
            tally(day, day_fields, to_state, 1)
            local revenue = ARGV[b + 6]
            if revenue ~= "" then
              local sep = string.find(revenue, ":", 1, true)
              local field, cents = "revenue:" .. string.sub(revenue, 1, sep - 1),
                string.sub(revenue, sep + 1)
              local sum = (day[field] or 0) + (tonumber(cents) or EXACT)
              if sum < EXACT then
                tally(day, day_fields, field, tonumber(cents))
              else
                -- pcall: an absurd total overflowing the day's 64-bit sum must not fail the batch.
                redis.pcall("HINCRBY", KEYS[K_DAY], field, cents)
              end
            end
          end
          out[i] = 1
        else
          out[i] = 0
        end
        acks[#acks + 1] = msg
      end
    end
  end
end

local ok, err = pcall(apply)
-- The boards get the completions applied before any failure, like the acks and counters below.
-- Should the flush itself fail (a board key of the wrong type), those orders have moved on all
-- the same and are acked: their board figures are lost, as a retry would find them stale.
local flushed, flush_err = true, nil
if live then
  flushed, flush_err = pcall(function()
    lb_flush(live)
    lb_flush(staging)
  end)
end
for i = 1, #acks, 1000 do
  redis.call("XACK", KEYS[1], group, unpack(acks, i, math.min(i + 999, #acks)))
end
for _, state in ipairs(moved) do
  if moves[state] ~= 0 then
    redis.call("HINCRBY", KEYS[2], state, moves[state])
  end
end
if #day_fields > 0 then
  for _, field in ipairs(day_fields) do
    redis.pcall("HINCRBY", KEYS[K_DAY], field, string.format("%.0f", day[field]))
  end
  redis.call("EXPIRE", KEYS[K_DAY], 691200, "NX")
end
if terminals > 0 then
  redis.call("INCRBY", KEYS[K_TPUT], terminals)
  redis.call("EXPIRE", KEYS[K_TPUT], 300)
end
if not ok then
  error(err)
end
if not flushed then
  error(flush_err)
end
for i = 1, #latencies do
  out[n + i] = latencies[i]
end
return out
