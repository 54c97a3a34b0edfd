-- commit.lua: for a batch of messages of one stage, apply each order's state transition, enqueue
-- the order for its next stage(s) and XACK the message -- one atomic step per batch.
-- A transition is applied only while the order still waits for this stage in this attempt
-- (field k = stage, field a = attempt): a replayed or stale message is just acked (fencing).
-- An item with an empty to_state is ack-only (stages with no state change, e.g. notify).
-- A terminal order's entries carry r=1 when the order reached a terminal state before (it was
-- re-submitted or its dead letter retried), so the analytics keep only its latest outcome.
-- A completion's entry in the facts stream carries b=1: the leaderboards have not counted it
-- yet. The snapshot stage adds it once it has registered the file that holds it (lb_apply.lua),
-- so the boards follow the registered store; entries without the field were written by earlier
-- versions, which counted the completion here.
-- Per order it costs one HMGET, one HSET and one XADD per output; the acks, the state counters
-- and the day's counters are written once per batch. Should a call fail half-way, everything
-- decided before the failure is still acked and counted before the error is returned, so a retry
-- finds those messages stale and every figure right.
-- KEYS[1] source stream   KEYS[2] state counts   KEYS[3 .. 2+m] output streams 1..m
-- KEYS[3+m] today's counters hash (terminal states, and revenue per currency of completed orders)
-- KEYS[4+m] this second's throughput counter   KEYS[4+m+i] order hash of the i-th item
-- ARGV[1] group   ARGV[2] stage   ARGV[3] now (ms)   ARGV[4] count n   ARGV[5] outputs m
-- ARGV[6] the output (1..m) whose completion entries carry b=1 (0: none)
-- ARGV[7] number of transitions t, then 3 per transition: to_state, next stage ("" when
--         terminal), outputs ("", or digits 1..m)
-- then 6 per item: msg id, order id, attempt, transition (1..t), note (stored in field p when
--                  not ""), revenue ("<currency>:<cents>" for a completion, else "")
-- Returns one integer per item: 1 applied, 0 stale (acked only), -1 order missing (not acked);
-- then, for each applied item whose new state is terminal (in item order), the ms since its order
-- was submitted (-1 when unknown): the end-to-end latency, at the cost of one more HMGET field.
-- include: ms
-- include: tally
-- include: submitted
-- include: order
local group, stage, now, n = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local now_ms = tonumber(now)
local m, boards_output = tonumber(ARGV[5]), tonumber(ARGV[6])
local K_DAY, K_TPUT, K_ORDERS = 3 + m, 4 + m, 4 + m
-- Keyed by the items' argument itself ("1", "2", ...), with each output's stream key looked up
-- here once: per item, a table lookup instead of a string-to-number conversion per field.
-- Per output also the fields its entries end with, for an order that was terminal before (r=1)
-- and for one that was not: b=1 on a completion's entry in the facts stream.
local R, B, RB, NONE = { "r", "1" }, { "b", "1" }, { "r", "1", "b", "1" }, {}
local transitions, t_count = {}, tonumber(ARGV[7])
for t = 1, t_count do
  local to_state, outputs, streams, tails = ARGV[5 + 3 * t], ARGV[7 + 3 * t], {}, {}
  for j = 1, #outputs do
    local out = tonumber(string.sub(outputs, j, j))
    local flagged = to_state == "completed" and out == boards_output
    streams[j] = KEYS[2 + out]
    tails[j] = flagged and { RB, B } or { R, NONE }
  end
  transitions[tostring(t)] = { to_state, ARGV[6 + 3 * t], streams, tails }
end
local first = 7 + 3 * t_count
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
          local note = ARGV[b + 5]
          local history = order_advance(cur[5], cur[6], to_state, now_ms)
          if note ~= "" then
            redis.call("HSET", key, "s", to_state, "k", transition[2], "h", history, "p", note)
          else
            redis.call("HSET", key, "s", to_state, "k", transition[2], "h", history)
          end
          local outputs, tails = transition[3], transition[4]
          local prior = terminal[to_state] and (attempt ~= "1" or order_was_dead_lettered(cur[5]))
          local which = prior and 1 or 2
          for j = 1, #outputs do
            redis.call("XADD", outputs[j], "*", "o", ARGV[b + 2], "a", attempt, "s", to_state,
              "d", cur[4], "c", cur[6] or "0", unpack(tails[j][which]))
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
for i = 1, #latencies do
  out[n + i] = latencies[i]
end
return out
