-- wrk script: pixel events spread over 100k users, 3000 IPs and 3000
-- devices, with a realistic mix of event types, products and pages.
local types = { "page", "page", "page", "page", "view", "view", "click",
                "cart", "purchase" }
local paths = { "/home", "/sale", "/sale/summer", "/p/1", "/p/2", "/blog",
                "/cart" }
local n = 0

function init(args)
  math.randomseed(os.time() + (tonumber(tostring({}):sub(8)) or 0))
end

request = function()
  n = n + 1
  local q = string.format(
    "/px?uid=u%d&ip=10.%d.%d.%d&d=d%d&e=%s&p=P%d&u=%s",
    math.random(0, 99999), math.random(0, 3), math.random(0, 255),
    math.random(0, 2), math.random(0, 2999), types[math.random(#types)],
    math.random(40, 44), paths[math.random(#paths)])
  return wrk.format("GET", q)
end
