-- order.lua (included, not a script): the fields ingest.lua leaves out of a new order's hash. It
-- holds only s, d and c; until its first transition writes them, its attempt is 1, its next
-- stage reserve and its history pending since c.
local function order_attempt(attempt)
  return attempt or "1"
end

-- Whether the order (its stored next stage and attempt) waits for `stage` in `attempt`.
local function order_awaits(next_stage, stored_attempt, stage, attempt)
  return (next_stage or "reserve") == stage and (stored_attempt or "1") == attempt
end

local function order_history(history, created)
  return history or ("pending@" .. (created or ""))
end
