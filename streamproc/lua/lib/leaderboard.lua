-- leaderboard.lua (included, not a script): add completed orders to the leaderboards of their
-- currency, as rows summed per customer and per SKU (a registered file's, or a rebuild's). Key
-- names are `<prefix><CUR>:<board>` as built by keys.Keys.leaderboard. Every figure is
-- additive, the dates keep their minimum / maximum and a name is the one on the customer's
-- (SKU's) latest order by (order_date, order_id), so adding in any order or merging partial
-- sums gives the same board. Amounts are integer cents, exact below 2^53.
-- A script sums its rows per customer and per SKU in Lua tables first (lb_batch, lb_add_*) and
-- writes them with lb_flush: per currency and per 500 customers (SKUs) one ZMSCORE, one ZADD,
-- one HMGET and at most one HSET, and one SADD of the batch's currencies; a row costs no
-- command of its own. Each customer's and SKU's figures besides the score are one card (one
-- hash field), read and written back whole (the script is atomic).
-- The sums are arrays, not records with named fields: filling hash parts cost Lua about 5% more
-- of the server's instructions per order (callgrind), a third of what the batching saves.
local LB_EXACT = 9007199254740992
local LB_CHUNK = 500 -- ids per call: an HMGET of old fields takes 4 per id, unpack() allows 8000
local lb_format, lb_floor = string.format, math.floor

-- Sums for one board prefix (the live boards, or a rebuild's staging copy): { prefix, its set of
-- currencies, the currencies in order, per currency { customer ids, customer -> sums, SKUs,
-- SKU -> sums, number of customers, number of SKUs } }.
local function lb_batch(prefix, currencies)
  return { prefix, currencies, {}, {} }
end

local function lb_currency(batch, cur)
  local c = batch[4][cur]
  if not c then
    c = { {}, {}, {}, {}, 0, 0 }
    batch[4][cur] = c
    local curs = batch[3]
    curs[#curs + 1] = cur
  end
  return c
end

-- Strings only (amounts numbers): comparisons and table keys must not fail or split later.
-- A name is taken when its key is strictly greater, so of equal keys the first added stays, as
-- with one update per order. Sums: { cents, orders, first date, last key, name }.
local function lb_add_customer(batch, cur, customer, cents, orders, name, first, last)
  local c = lb_currency(batch, cur)
  local s = c[2][customer]
  if not s then
    c[5] = c[5] + 1
    c[1][c[5]] = customer
    c[2][customer] = { cents, orders, first, last, name }
    return
  end
  s[1], s[2] = s[1] + cents, s[2] + orders
  if first < s[3] then
    s[3] = first
  end
  if last > s[4] then
    s[4], s[5] = last, name
  end
end

-- An empty name never replaces a stored one: `last` then plays no part.
-- Sums: { units, revenue cents, orders, last key of a named line (or nil), its name }.
local function lb_add_product(batch, cur, sku, units, cents, orders, name, last)
  local c = lb_currency(batch, cur)
  local s = c[4][sku]
  if not s then
    c[6] = c[6] + 1
    c[3][c[6]] = sku
    s = { 0, 0, 0, nil, nil }
    c[4][sku] = s
  end
  s[1], s[2], s[3] = s[1] + units, s[2] + cents, s[3] + orders
  if name ~= "" and (not s[4] or last > s[4]) then
    s[4], s[5] = last, name
  end
end

-- Merge rows (analytics/boardsums.py) from ARGV[from] on, 9 values each: kind ("c" customer |
-- "p" product), currency, id (customer id | SKU), amount (customer: cents spent | product:
-- units), revenue cents (product) or "", orders, name, first order date (customer) or "",
-- last key "<order_date>|<order_id>".
local function lb_add_rows(batch, from)
  for b = from, #ARGV, 9 do
    local cur = ARGV[b + 1]
    if ARGV[b] == "c" then
      lb_add_customer(batch, cur, ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 5]),
        ARGV[b + 6], ARGV[b + 7], ARGV[b + 8])
    else
      lb_add_product(batch, cur, ARGV[b + 2], tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4]),
        tonumber(ARGV[b + 5]), ARGV[b + 6], ARGV[b + 8])
    end
  end
end

-- The stored integer `have` (nil: none) plus `by` as the string to store, or nil when the sum
-- is not exact in a Lua number (or `have` is no integer).
local function lb_sum(have, by)
  local v = 0
  if have then
    v = tonumber(have)
    if not v or v ~= lb_floor(v) then
      return nil
    end
  end
  v = v + by
  if v >= LB_EXACT or v <= -LB_EXACT then
    return nil
  end
  return lb_format("%.0f", v)
end

-- Two non-negative decimal integers added digit by digit: a product's revenue past 2^53 cents,
-- where Lua numbers are no longer exact (HINCRBY's job before product cards).
local function lb_decimal_add(a, b)
  local out, carry, i, j = {}, 0, #a, #b
  while i > 0 or j > 0 or carry > 0 do
    local d = carry + (i > 0 and string.byte(a, i) - 48 or 0)
      + (j > 0 and string.byte(b, j) - 48 or 0)
    out[#out + 1] = d % 10
    carry = (d - d % 10) / 10
    i, j = i - 1, j - 1
  end
  return string.reverse(table.concat(out))
end

-- The sorted set `board` plus each id's amount (index 1 of its sums): the new scores are the old
-- ones plus the sums, as ZINCRBY would make them. They are passed as Lua numbers: redis.call
-- writes a number with every digit (%.17g, or the shortest exact form on newer servers), the same
-- string string.format("%.17g") gave, with the formatting done in C (about 0.3 us less per order).
local function lb_scores(board, ids, from, to, sums, args)
  local scores = redis.call("ZMSCORE", board, unpack(ids, from, to))
  local m = 0
  for i = from, to do
    local id = ids[i]
    args[m + 1] = (tonumber(scores[i - from + 1]) or 0) + sums[id][1]
    args[m + 2] = id
    m = m + 2
  end
  redis.call("ZADD", board, unpack(args, 1, m))
end

-- Writes one board and its info hash for a currency's ids, LB_CHUNK ids at a time: their new
-- scores, then one HMGET of each id's info fields (the id followed by each of `suffixes`) and
-- one HSET of what `settle` decides to change (settle returns the new length of the HSET list).
-- `upgrade` (optional) may fill in what the HMGET found missing from an older layout.
local function lb_flush_board(board, info, suffixes, ids, count, sums, scratch, settle, upgrade)
  local k = #suffixes
  for from = 1, count, LB_CHUNK do
    local to = math.min(from + LB_CHUNK - 1, count)
    lb_scores(board, ids, from, to, sums, scratch[1])
    local fields, f = scratch[2], 0
    for i = from, to do
      local id = ids[i]
      for x = 1, k do
        fields[f + x] = id .. suffixes[x]
      end
      f = f + k
    end
    local have = redis.call("HMGET", info, unpack(fields, 1, f))
    if upgrade then
      upgrade(info, ids, from, to, have)
    end
    local sets, m = scratch[3], 0
    for i = from, to do
      local id = ids[i]
      m = settle(info, sets, m, fields, (i - from) * k, have, id, sums[id])
    end
    if m > 0 then
      redis.call("HSET", info, unpack(sets, 1, m))
    end
  end
end

-- A customer's card in customer_info: `<orders>|<first date>|<order_date>|<order_id>|<name>` under
-- the customer id. One field instead of four (n, first, k, name): 123 instead of 307 bytes per
-- customer. Dates and order ids hold no "|" (SPEC §2), so the name is all after the fourth.
local function lb_card_read(card)
  if not card then
    return 0, nil, nil, nil
  end
  local orders, first, key, name = string.match(card, "^(%d+)|([^|]*)|([^|]*|[^|]*)|(.*)$")
  return tonumber(orders) or 0, first, key, name
end

-- A customer's sums {cents, orders, first date, latest key, name} added to their card. The order
-- count is a Lua number: exact up to 2^53 orders of one customer, which no store will ever hold.
local function lb_settle_customer(info, sets, m, fields, j, have, id, s)
  local orders, first, key, name = lb_card_read(have[j + 1])
  if not first or s[3] < first then
    first = s[3]
  end
  if not key or s[4] > key then
    key, name = s[4], s[5]
  end
  sets[m + 1] = fields[j + 1]
  sets[m + 2] = lb_format("%.0f", orders + s[2]) .. "|" .. first .. "|" .. key .. "|" .. name
  return m + 2
end

-- A product's card in product_info: `<revenue cents>|<orders>|<order_date>|<order_id>|<name>`
-- under the SKU, the key and name those of the latest order with a named line (`|||` before
-- any). One field instead of four (`<sku>:r`, `:n`, `:k`, `:name`): one HMGET field and one
-- HSET pair per SKU of a batch instead of three and up to four.
local function lb_product_read(card)
  if not card then
    return nil, 0, nil, nil
  end
  local revenue, orders, key, name = string.match(card, "^(%d+)|(%d+)|([^|]*|[^|]*)|(.*)$")
  if key == "|" then
    key = nil
  end
  return revenue, tonumber(orders) or 0, key, name
end

-- A SKU's sums {units, cents, orders, latest named key, name} added to its card. Revenue is
-- exact at any size (lb_decimal_add past 2^53 cents); the order count as a customer's.
local function lb_settle_product(info, sets, m, fields, j, have, id, s)
  local revenue, orders, key, name = lb_product_read(have[j + 1])
  revenue = lb_sum(revenue, s[2]) or lb_decimal_add(revenue or "0", lb_format("%.0f", s[2]))
  if s[4] and (not key or s[4] > key) then
    key, name = s[4], s[5]
  end
  sets[m + 1] = fields[j + 1]
  sets[m + 2] = revenue .. "|" .. lb_format("%.0f", orders + s[3]) .. "|" .. (key or "|") .. "|"
    .. (name or "")
  return m + 2
end

-- SKUs with no card yet may have figures in the layout before cards (`<sku>:r`, `:n`, `:k`,
-- `:name`, written by earlier versions): read once, as a card, and dropped when it is written.
-- A board written from cards pays one HMGET per chunk with a new SKU, nothing otherwise.
local function lb_product_upgrade(info, ids, from, to, have)
  local old, n, at = {}, 0, {}
  for i = from, to do
    if not have[i - from + 1] then
      local id = ids[i]
      old[n + 1], old[n + 2], old[n + 3], old[n + 4] = id .. ":r", id .. ":n", id .. ":k",
        id .. ":name"
      n = n + 4
      at[#at + 1] = i - from + 1
    end
  end
  if n == 0 then
    return
  end
  local found = redis.call("HMGET", info, unpack(old, 1, n))
  local drop, d = {}, 0
  for x = 1, #at do
    local r, c, k, name = found[4 * x - 3], found[4 * x - 2], found[4 * x - 1], found[4 * x]
    if r or c or k or name then
      have[at[x]] = (r and string.match(r, "^%d+$") or "0") .. "|"
        .. (c and string.match(c, "^%d+$") or "0") .. "|"
        .. (k and string.find(k, "|", 1, true) and k or "|") .. "|" .. (name or "")
      for y = 4 * x - 3, 4 * x do
        drop[d + 1] = old[y]
        d = d + 1
      end
    end
  end
  if d > 0 then
    redis.call("HDEL", info, unpack(drop, 1, d))
  end
end

-- Write a batch's sums to its boards (nothing when it is empty).
local function lb_flush(batch)
  local prefix, curs = batch[1], batch[3]
  if #curs == 0 then
    return
  end
  -- Argument lists, reused: only their first entries are passed (unpack with a count), and
  -- growing fresh tables again for every chunk costs Lua more than the stale tail.
  local scratch = { {}, {}, {} }
  for _, cur in ipairs(curs) do
    local c = batch[4][cur]
    local board = prefix .. cur .. ":"
    lb_flush_board(board .. "customers", board .. "customer_info", { "" }, c[1], c[5], c[2],
      scratch, lb_settle_customer)
    lb_flush_board(board .. "products", board .. "product_info", { "" }, c[3], c[6], c[4],
      scratch, lb_settle_product, lb_product_upgrade)
  end
  redis.call("SADD", batch[2], unpack(curs))
end
