// The ecosystem file of the import issue, exactly as PM2 users write it.
module.exports = {
  apps: [{
    name: 'my-api', script: './src/index.js', instances: 'max', exec_mode: 'cluster',
    watch: false, max_memory_restart: '300M', env: { NODE_ENV: 'production', PORT: 3000 },
    post_update: ['npm install', 'npm run build'], restart_delay: 2000, max_restarts: 10,
    log_date_format: 'YYYY-MM-DD HH:mm Z', error_file: './logs/error.log',
    out_file: './logs/out.log', merge_logs: true,
    env_production: { PM2_HOME: '/var/www/.pm2' },
  }],
};
