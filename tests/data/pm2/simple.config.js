// `pm2 init simple` (PM2's documentation, "Ecosystem File").
module.exports = {
  apps : [{
    name   : "app1",
    script : "./app.js"
  }]
}
