-- order.lua (included, not a script): the fields ingest.lua leaves out of a new order's hash, and
-- the history's format. A new hash holds only s, d and c; until its first transition writes them,
-- its attempt is 1, its next stage reserve and its history pending since c.
-- The history is `state@t;state@t…`, oldest first. The scripts write each t as `+<ms after c>`:
-- 5 bytes instead of 13 per step, and no field u (updated), which is the last step's time. That
-- keeps a finished order's hash in a smaller allocation (296 instead of 392 bytes). Hashes written
-- before hold absolute ms (and u), which every reader still takes.
local function order_attempt(attempt)
  return attempt or "1"
end

-- Whether the order (its stored next stage and attempt) waits for `stage` in `attempt`.
local function order_awaits(next_stage, stored_attempt, stage, attempt)
  return (next_stage or "reserve") == stage and (stored_attempt or "1") == attempt
end

local function order_history(history, created)
  return history or "pending@+0"
end

-- The history with `state` entered at `now` (ms) appended.
local function order_advance(history, created, state, now)
  local since = tonumber(created)
  local at = since and ("+" .. string.format("%d", tonumber(now) - since)) or now
  return order_history(history, created) .. ";" .. state .. "@" .. at
end
