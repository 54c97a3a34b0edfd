-- ingest.lua: create a batch of orders and enqueue each for the reserve stage, in file order.
-- An order whose hash exists is a duplicate, unless force is set and it ended failed, rolled_back or
-- dead_lettered: then its attempt is bumped and it is re-submitted.
-- A new order's hash holds only its state, payload and creation time (s, d, c): every reader takes
-- an absent attempt, next stage and history as lib/order.lua says (and the API and export as
-- streamproc/orderview.py does). Three fields instead of six: a sixth less server work per order
-- and 70 fewer bytes for every order not yet reserved.
-- Each order is all or nothing: its hash, its stream entry and the counters. Should a command fail
-- (a key of the wrong type, out of memory), the batch stops at that order: the orders before it
-- stay, counted; that order and the rest are left untouched.
-- The CSV rows of the batch are counted per outcome in the ingest rows hash (imported, which
-- includes re-submitted orders, duplicate, and rejected: the rows the client refused since its
-- previous batch), so a one-shot command's figures can be scraped later.
-- KEYS[1]  reserve stream   KEYS[2]  state counts hash   KEYS[3] today's counters hash
-- KEYS[4]  this import's stop marker (set when a batch stops; later batches then do nothing)
-- KEYS[5]  ingest rows hash
-- KEYS[5+i] order hash of the i-th order
-- KEYS[6+n] (not on an import's first batch) the order hash of the previous batch's last order
-- ARGV[1]  now (ms)   ARGV[2]  force ("1" or "0")   ARGV[3] count n
-- ARGV[4]  where the order id starts in an order hash's key (the key prefix's length + 1)
-- ARGV[5]  rows rejected by the client since its previous batch
-- ARGV[6]  CSV rows of the batch's n orders, all told
-- ARGV[7]  CSV rows of each order, comma-separated ("1,3,1"): one argument for the batch, read
--          only when some orders are not imported (a duplicate, a stop)
-- ARGV[7+i] encoded payload of the i-th order (its id is read off its key: one argument less)
-- Returns a string with one char per order: n = new, r = re-submitted, d = duplicate. A batch that
-- stopped returns {those chars for the orders before the stop, the reason}.
-- The client sends the next batches before this one answers; the stop marker keeps a batch sent
-- after a failed one from importing anything, so nothing after the failing order is imported.
-- Out of memory the marker cannot be written (SET is a write too), and memory may be back under
-- the limit when the next batch runs (the query buffer that held the failed batch is freed):
-- then the previous batch's last order, missing, stops it. A read only, so it holds under OOM.
-- include: ms
-- include: order
local now, force, n, id_at = ARGV[1], ARGV[2] == "1", tonumber(ARGV[3]), tonumber(ARGV[4])
-- The row counts are statistics: pcall, so a broken counter never fails an import.
if ARGV[5] ~= "0" then
  redis.pcall("HINCRBY", KEYS[5], "rejected", ARGV[5])
end
local fence = KEYS[6 + n]
if redis.call("EXISTS", KEYS[4]) == 1 or (fence and redis.call("EXISTS", fence) == 0) then
  return { "", "an earlier batch of this import stopped" }
end
local resubmittable = { failed = true, rolled_back = true, dead_lettered = true }
local out = {}
local created, resubmitted, duplicates = 0, 0, 0
local left = {} -- state -> orders re-submitted out of it
local stop

-- A redis.pcall reply that is an error, as its message; nil for any other reply.
local function err(reply)
  if type(reply) == "table" and reply.err then
    return reply.err
  end
end

-- A fresh import finds none of its orders: then one EXISTS over the batch's keys (in chunks that
-- unpack can take) stands in for an HGET per order, about a sixth of the server's work per row.
-- Any key found (a duplicate, a re-submission, a key of another type) and every order is looked
-- up on its own, as before.
local fresh = true
for i = 6, 5 + n, 1000 do
  if redis.call("EXISTS", unpack(KEYS, i, math.min(i + 999, 5 + n))) > 0 then
    fresh = false
    break
  end
end
local made = {} -- in a fresh batch: keys created so far, so a repeated id is a duplicate

for i = 1, n do
  local key = KEYS[5 + i]
  local state
  if fresh then
    state = made[key]
  else
    state = redis.pcall("HGET", key, "s")
    stop = err(state)
    if stop then break end
  end
  if not state then
    -- The stream entry first: it is the write that can fail (out of memory, a stream key of
    -- another type), and it can be undone with XDEL should the hash write fail after it.
    local payload = ARGV[7 + i]
    local id = redis.pcall("XADD", KEYS[1], "*", "o", string.sub(key, id_at), "a", "1", "s",
      "pending", "d", payload, "c", now)
    stop = err(id)
    if stop then break end
    stop = err(redis.pcall("HSET", key, "s", "pending", "d", payload, "c", now))
    if stop then
      redis.call("XDEL", KEYS[1], id)
      break
    end
    created = created + 1
    made[key] = "pending"
    out[i] = "n"
  elseif force and resubmittable[state] then
    local cur = redis.call("HMGET", key, "a", "h", "d", "c")
    local attempt = (tonumber(order_attempt(cur[1])) or 0) + 1
    local id = redis.pcall("XADD", KEYS[1], "*", "o", string.sub(key, id_at), "a",
      tostring(attempt), "s", "pending", "d", cur[3], "c", cur[4] or "0")
    stop = err(id)
    if stop then break end
    stop = err(redis.pcall("HSET", key, "s", "pending", "a", tostring(attempt), "k", "reserve",
      "h", order_advance(cur[2], cur[4], "pending", now)))
    if stop then
      redis.call("XDEL", KEYS[1], id)
      break
    end
    redis.call("HDEL", key, "p", "e")
    left[state] = (left[state] or 0) + 1
    resubmitted = resubmitted + 1
    out[i] = "r"
  else
    duplicates = duplicates + 1
    out[i] = "d"
  end
end
-- The rows per outcome: when every order was imported, the batch's total; else order by order.
local imported_rows, duplicate_rows = 0, 0
if duplicates == 0 and #out == n then
  imported_rows = tonumber(ARGV[6])
else
  local i = 0
  for rows in string.gmatch(ARGV[7], "%d+") do
    i = i + 1
    local outcome = out[i]
    if not outcome then break end
    if outcome == "d" then
      duplicate_rows = duplicate_rows + tonumber(rows)
    else
      imported_rows = imported_rows + tonumber(rows)
    end
  end
end
-- The counters once per batch rather than once per order: the same totals, in the same atomic
-- step, for a fraction of the server's work.
if created + resubmitted > 0 then
  redis.call("HINCRBY", KEYS[2], "pending", created + resubmitted)
end
for state, count in pairs(left) do
  redis.call("HINCRBY", KEYS[2], state, -count)
end
if imported_rows > 0 then
  redis.pcall("HINCRBY", KEYS[5], "imported", imported_rows)
end
if duplicate_rows > 0 then
  redis.pcall("HINCRBY", KEYS[5], "duplicate", duplicate_rows)
end
if created > 0 then
  -- "Orders today" for /api/stats; the counters outlive the day by a week for late readers.
  redis.call("HINCRBY", KEYS[3], "orders", created)
  redis.call("EXPIRE", KEYS[3], 691200, "NX")
end
if stop then
  -- Best effort: out of memory, the marker cannot be written, and the next batch's check of this
  -- one's last order stops it instead.
  redis.pcall("SET", KEYS[4], "1", "PX", 600000)
  return { table.concat(out), stop }
end
return table.concat(out)
