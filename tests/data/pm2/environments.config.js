// PM2's documentation, "Switching environments", with the ports the apps listen on.
module.exports = {
  apps : [{
    name: "app",
    script: "./app.js",
    env_production: {
       NODE_ENV: "production",
       PORT: 8080
    },
    env_development: {
       NODE_ENV: "development",
       PORT: 3000
    }
  }]
}
