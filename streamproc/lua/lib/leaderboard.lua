-- leaderboard.lua (included, not a script): add completed orders to the leaderboards of their
-- currency. Key names are `<prefix><CUR>:<board>` as built by keys.Keys.leaderboard. Every
-- figure is additive, the dates keep their minimum / maximum and a name is the one on the
-- customer's (SKU's) latest order by (order_date, order_id), so adding in any order or merging
-- partial sums gives the same board. Amounts are integer cents, exact below 2^53.
local function lb_customer(prefix, cur, customer, cents, orders, name, first, last)
  local info = prefix .. cur .. ":customer_info"
  redis.call("ZINCRBY", prefix .. cur .. ":customers", cents, customer)
  redis.call("HINCRBY", info, customer .. ":n", orders)
  local have = redis.call("HMGET", info, customer .. ":first", customer .. ":k")
  if not have[1] or first < have[1] then
    redis.call("HSET", info, customer .. ":first", first)
  end
  if not have[2] or last > have[2] then
    redis.call("HSET", info, customer .. ":k", last, customer .. ":name", name)
  end
end

local function lb_product(prefix, cur, sku, units, cents, orders, name, last)
  local info = prefix .. cur .. ":product_info"
  redis.call("ZINCRBY", prefix .. cur .. ":products", units, sku)
  redis.call("HINCRBY", info, sku .. ":r", cents)
  redis.call("HINCRBY", info, sku .. ":n", orders)
  if name ~= "" then
    local have = redis.call("HGET", info, sku .. ":k")
    if not have or last > have then
      redis.call("HSET", info, sku .. ":k", last, sku .. ":name", name)
    end
  end
end

-- One completed order, from its stored payload (models.Order, array-like JSON:
-- [order_id, customer_id, customer_name, currency, order_date, [[sku, name, qty, cents]...], email]).
local function lb_add_order(prefix, payload)
  local o = cjson.decode(payload)
  local oid, customer, name, cur, date = o[1], string.format("%.0f", o[2]), o[3], o[4], o[5]
  local key = date .. "|" .. oid
  local total, skus, per = 0, {}, {}
  for _, ln in ipairs(o[6]) do
    local sku, amount = ln[1], ln[3] * ln[4]
    total = total + amount
    local p = per[sku]
    if not p then
      p = { 0, 0, "" }
      per[sku] = p
      skus[#skus + 1] = sku
    end
    p[1], p[2] = p[1] + ln[3], p[2] + amount
    if ln[2] ~= "" then
      p[3] = ln[2]
    end
  end
  lb_customer(prefix, cur, customer, string.format("%.0f", total), 1, name, date, key)
  for _, sku in ipairs(skus) do
    local p = per[sku]
    lb_product(prefix, cur, sku, string.format("%.0f", p[1]), string.format("%.0f", p[2]), 1,
      p[3], key)
  end
  redis.call("SADD", prefix .. "currencies", cur)
end
